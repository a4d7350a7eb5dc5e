//! Server-sent events: a stream sees its position fall, then its admission with a valid token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use tiketi_shared::token::AdmissionKeys;

/// `event:`/`data:` pairs of an SSE body, one at a time.
struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
}

impl Sse {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event; `Ok(None)` when the stream ended, `Err(())` when `deadline` passed first.
    async fn next(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<Option<(String, serde_json::Value)>, ()> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !data.is_empty() {
                    return Ok(Some((name, serde_json::from_str(&data).unwrap())));
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
                Ok(None) => return Ok(None),
                Err(_) => return Err(()),
            }
        }
    }

    /// Events until one named `last` (included) or the stream's end; panics after `limit`.
    async fn until(&mut self, last: &str, limit: Duration) -> Vec<(String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            match self.next(deadline).await {
                Ok(Some(ev)) => {
                    let done = ev.0 == last;
                    out.push(ev);
                    if done {
                        return out;
                    }
                }
                Ok(None) => return out,
                Err(()) => panic!("no {last:?} within {limit:?}; got {out:?}"),
            }
        }
    }
}

/// Reads `event:`/`data:` pairs from an SSE body until it ends or `limit` passes.
async fn read_events(resp: reqwest::Response, limit: Duration) -> Vec<(String, serde_json::Value)> {
    Sse::new(resp).until("", limit).await
}

#[tokio::test]
async fn stream_sees_position_fall_then_admission() {
    let url = redis_url();
    let event = unique_event("sse");
    let mut spec = EventSpec::new(&event);
    spec.rate_per_second = 3;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let api = Api::new(&server.base, &event);
    for i in 1..=8 {
        assert_eq!(api.join(&format!("u{i}")).await.status(), 201);
    }
    let resp = api.stream("u8").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = read_events(resp, Duration::from_secs(20)).await;

    let (last_name, last) = events.last().unwrap();
    assert_eq!(last_name, "admitted", "{events:?}");
    assert_eq!(last["state"], "admitted");
    let token = last["admission"]["token"].as_str().unwrap();
    let keys = AdmissionKeys::new(ADMISSION_SECRET.as_bytes());
    keys.verify(Some(token), &event, "u8", chrono::Utc::now().timestamp_millis())
        .unwrap();

    let positions: Vec<u64> = events
        .iter()
        .filter(|(n, _)| n == "position")
        .map(|(_, v)| v["position"].as_u64().unwrap())
        .collect();
    assert!(positions.len() >= 3, "saw the position fall: {positions:?}");
    assert!(
        positions.windows(2).all(|w| w[1] < w[0]),
        "positions only fall: {positions:?}"
    );
    assert!(positions[0] <= 8);
    assert!(
        *positions.last().unwrap() <= 2,
        "admitted from the head: {positions:?}"
    );
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn stream_corrects_for_users_ahead_who_leave_and_reports_sold_out() {
    let url = redis_url();
    let event = unique_event("sse-leave");
    let mut spec = EventSpec::new(&event);
    spec.on_sale_at = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut a = args(&url, Some(spec.write()));
    a.admission = false;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    for i in 1..=6 {
        assert_eq!(api.join(&format!("u{i}")).await.status(), 201);
    }
    let resp = api.stream("u6").await;
    assert_eq!(resp.status(), 200);
    for u in ["u1", "u3"] {
        assert_eq!(api.leave(u).await.status(), 204);
    }
    // Nobody is admitted here, so only the bounded re-read of ranks can move the position.
    let api2 = Api::new(&server.base, &event);
    let sold_out_later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut c = redis(&redis_url()).await;
        let _: () = redis::AsyncCommands::set(&mut c, keys(&api2.event).sold_out(), "1")
            .await
            .unwrap();
    });
    let events = Sse::new(resp).until("soldOut", Duration::from_secs(20)).await;
    sold_out_later.await.unwrap();
    let positions: Vec<u64> = events
        .iter()
        .filter(|(n, _)| n == "position")
        .map(|(_, v)| v["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions.first(), Some(&6), "{events:?}");
    assert_eq!(
        positions.last(),
        Some(&4),
        "the re-read corrects the place after leaves: {events:?}"
    );
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "soldOut");
    assert_eq!(last["state"], "soldOut");
    assert_eq!(api.stats().await["soldOut"], true);
    server.stop().await;
    cleanup(&url, &event).await;
}

/// Sold out is not the end for someone in line: their stream stays open and keeps their place
/// (its heartbeats go on, refreshed often enough for a short heartbeat timeout), and when seats
/// come back it goes on with their position. Before, the stream ended at `soldOut` (a client
/// taking the documented "final" event at its word was swept), and a stream's heartbeat was
/// refreshed every 5 s whatever the timeout (a 3 s timeout swept streaming users anyway).
#[tokio::test]
async fn a_stream_stays_open_through_sold_out_keeps_its_place_and_resumes() {
    let url = redis_url();
    let event = unique_event("sse-soldout");
    let mut spec = EventSpec::new(&event);
    spec.max_active = 1;
    spec.heartbeat_timeout_seconds = 3;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let api = Api::new(&server.base, &event);
    for u in ["first", "streamer"] {
        assert_eq!(api.join(u).await.status(), 201);
    }
    // "first" takes the one active place; "streamer" waits behind it, holding only a stream.
    wait_for("first admitted", Duration::from_secs(5), || async {
        api.me_json("first").await["state"] == "admitted"
    })
    .await;
    let resp = api.stream("streamer").await;
    assert_eq!(resp.status(), 200);
    let mut sse = Sse::new(resp);
    let first = sse.until("position", Duration::from_secs(5)).await;
    assert_eq!(first.last().unwrap().1["position"], 1, "{first:?}");

    let mut c = redis(&url).await;
    let sold_out = keys(&event).sold_out();
    let _: () = redis::AsyncCommands::set(&mut c, &sold_out, "1").await.unwrap();
    let seen = sse.until("soldOut", Duration::from_secs(5)).await;
    assert_eq!(seen.last().unwrap().0, "soldOut", "{seen:?}");
    // Three heartbeat timeouts with only the stream open: the stream stays, the place stays.
    let quiet = sse
        .next(tokio::time::Instant::now() + Duration::from_secs(9))
        .await;
    assert!(
        quiet.is_err(),
        "the stream ended or changed while sold out: {quiet:?}"
    );
    let rank: Option<u64> = redis::AsyncCommands::zrank(&mut c, keys(&event).queue(), "streamer")
        .await
        .unwrap();
    assert_eq!(
        rank,
        Some(0),
        "the streaming user lost their place while sold out"
    );

    let _: () = redis::AsyncCommands::del(&mut c, &sold_out).await.unwrap();
    let resumed = sse.until("position", Duration::from_secs(5)).await;
    let (name, status) = resumed.last().unwrap();
    assert_eq!(
        (name.as_str(), &status["position"]),
        ("position", &serde_json::json!(1)),
        "{resumed:?}"
    );
    server.stop().await;
    cleanup(&url, &event).await;
}

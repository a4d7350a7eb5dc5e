//! Server-sent events: a stream sees its position fall, then its admission with a valid token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use tiketi_shared::token::AdmissionKeys;

/// Reads `event:`/`data:` pairs from an SSE body until it ends or `limit` passes.
async fn read_events(resp: reqwest::Response, limit: Duration) -> Vec<(String, serde_json::Value)> {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => chunk.unwrap(),
            Ok(None) => break,
            Err(_) => panic!("stream did not finish within {limit:?}; got {out:?}"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
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
                out.push((name, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
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
    let resp = api
        .client
        .get(api.stream_url())
        .bearer_auth(user_token("u8"))
        .send()
        .await
        .unwrap();
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
    let resp = api
        .client
        .get(api.stream_url())
        .bearer_auth(user_token("u6"))
        .send()
        .await
        .unwrap();
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
    let events = read_events(resp, Duration::from_secs(20)).await;
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

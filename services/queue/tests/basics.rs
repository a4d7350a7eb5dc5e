//! Join, position, ETA, leave, heartbeats, sold out, auth, rate limits and the ops endpoints,
//! against real Redis (REDIS_URL) with the service in process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;

#[tokio::test]
async fn join_is_idempotent() {
    let url = redis_url();
    let event = unique_event("idem");
    let spec = EventSpec::new(&event);
    let mut a = args(&url, Some(spec.write()));
    a.admission = false;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);

    for u in ["alice", "bob"] {
        assert_eq!(api.join(u).await.status(), 201);
    }
    let first = api.join("alice").await;
    assert_eq!(first.status(), 200, "a repeat join is not a new join");
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(body["state"], "waiting");
    assert_eq!(body["position"], 1);
    let again: serde_json::Value = api.join("bob").await.json().await.unwrap();
    assert_eq!(again["position"], 2);

    let mut c = redis(&url).await;
    let depth: u64 = c.zcard(keys(&event).queue()).await.unwrap();
    assert_eq!(depth, 2, "repeat joins add nobody");
    assert_eq!(api.stats().await["queueDepth"], 2);
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn fifo_after_on_sale() {
    let url = redis_url();
    let event = unique_event("fifo");
    let mut a = args(&url, Some(EventSpec::new(&event).write()));
    a.admission = false;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    let users: Vec<String> = (0..25).map(|i| format!("fifo-{:02}", 24 - i)).collect();
    for (i, u) in users.iter().enumerate() {
        let r = api.join(u).await;
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["position"], i as u64 + 1, "{u}");
    }
    let mut c = redis(&url).await;
    let order: Vec<String> = c.zrange(keys(&event).queue(), 0, -1).await.unwrap();
    assert_eq!(order, users, "the queue is in join order, not name order");
    for (i, u) in users.iter().enumerate() {
        assert_eq!(api.me_json(u).await["position"], i as u64 + 1);
    }
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn a_lost_sequence_counter_never_puts_a_new_joiner_ahead_of_the_line() {
    // The counter that numbers joiners is deleted (eviction, a failover that kept the queue but
    // not it): the next joiner still goes to the back.
    let url = redis_url();
    let event = unique_event("seq-lost");
    let mut a = args(&url, Some(EventSpec::new(&event).write()));
    a.admission = false;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    for u in ["first", "second", "third"] {
        assert_eq!(api.join(u).await.status(), 201);
    }
    let mut c = redis(&url).await;
    let _: () = c.del(keys(&event).seq()).await.unwrap();
    for (u, position) in [("fourth", 4), ("fifth", 5)] {
        let r = api.join(u).await;
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["position"], position, "{u}");
    }
    let order: Vec<String> = c.zrange(keys(&event).queue(), 0, -1).await.unwrap();
    assert_eq!(order, ["first", "second", "third", "fourth", "fifth"]);
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn position_and_eta_stay_correct_while_others_leave() {
    let url = redis_url();
    let event = unique_event("leave");
    let mut spec = EventSpec::new(&event);
    spec.rate_per_second = 2;
    let mut a = args(&url, Some(spec.write()));
    a.admission = false;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    for i in 1..=10 {
        assert_eq!(api.join(&format!("u{i}")).await.status(), 201);
    }
    let me = api.me_json("u7").await;
    assert_eq!(me["position"], 7);
    // No admission history: the ETA uses the configured 2 users/s.
    assert_eq!(me["etaSeconds"], 4);
    assert_eq!(me["etaRange"]["minSeconds"], 4);
    assert_eq!(me["etaRange"]["maxSeconds"], 6);

    for u in ["u2", "u4"] {
        assert_eq!(api.leave(u).await.status(), 204);
    }
    assert_eq!(api.leave("u4").await.status(), 204, "leaving twice is fine");
    let me = api.me_json("u7").await;
    assert_eq!(me["position"], 5);
    assert_eq!(me["etaSeconds"], 3);
    assert_eq!(api.leave("u9").await.status(), 204);
    assert_eq!(
        api.me_json("u7").await["position"],
        5,
        "someone behind leaving changes nothing"
    );
    assert_eq!(api.me_json("u10").await["position"], 7);
    assert_eq!(api.me("u2").await.status(), 404, "a user who left is not in line");
    assert_eq!(api.join("u2").await.status(), 201);
    assert_eq!(
        api.me_json("u2").await["position"],
        8,
        "rejoining goes to the back"
    );
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn users_who_stop_polling_lose_their_place() {
    let url = redis_url();
    let event = unique_event("hb");
    let mut spec = EventSpec::new(&event);
    // Before the on-sale: nobody is admitted, so only the heartbeat sweep removes people.
    spec.on_sale_at = chrono::Utc::now() + chrono::Duration::hours(1);
    spec.heartbeat_timeout_seconds = 2;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let api = Api::new(&server.base, &event);
    for u in ["polling", "silent"] {
        let r = api.join(u).await;
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["preQueue"], true);
        assert!(body.get("position").is_none(), "pre-queue has no position yet");
    }
    let mut c = redis(&url).await;
    let k = keys(&event);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(
            api.me("polling").await.status(),
            200,
            "a polling user keeps the place"
        );
        let silent: Option<f64> = c.zscore(k.prequeue(), "silent").await.unwrap();
        if silent.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent user was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(api.me("silent").await.status(), 404);
    let polling: Option<f64> = c.zscore(k.prequeue(), "polling").await.unwrap();
    assert!(polling.is_some());
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn sold_out_answers_joins_and_tells_waiting_users() {
    let url = redis_url();
    let event = unique_event("soldout");
    let mut a = args(&url, Some(EventSpec::new(&event).write()));
    a.admission = false;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    assert_eq!(api.join("early").await.status(), 201);
    let mut c = redis(&url).await;
    let _: () = c.set(keys(&event).sold_out(), "1").await.unwrap();
    let r = api.join("late").await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://tiketi.gg/problems/sold-out");
    assert_eq!(p["state"], "soldOut");
    assert_eq!(api.me_json("early").await["state"], "soldOut");
    // Someone in line who joins again (a page reload) is told to keep waiting, not that the
    // queue is closed: their place is kept for seats that come back.
    let again = api.join("early").await;
    assert_eq!(again.status(), 200);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["state"], "soldOut");
    assert!(body["pollAfterSeconds"].as_u64().unwrap() >= 1, "{body}");
    let depth: u64 = c.zcard(keys(&event).queue()).await.unwrap();
    assert_eq!(
        depth, 1,
        "sold out keeps the line (nothing lost) but admits nobody"
    );
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn sold_out_then_seats_back_resumes_admission_in_the_original_order() {
    let url = redis_url();
    let event = unique_event("resume");
    let mut spec = EventSpec::new(&event);
    spec.heartbeat_timeout_seconds = 1;
    spec.max_active = 1;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let api = Api::new(&server.base, &event);
    let mut c = redis(&url).await;
    let k = keys(&event);
    for u in ["first", "second", "third"] {
        assert_eq!(api.join(u).await.status(), 201);
    }
    wait_for("first to be admitted", Duration::from_secs(10), || async {
        api.me_json("first").await["state"] == "admitted"
    })
    .await;
    assert_eq!(api.join("gives-up").await.status(), 201);
    let _: () = c.set(k.sold_out(), "1").await.unwrap();
    // Three heartbeat timeouts of sold out: those who keep polling (as pollAfterSeconds tells
    // them) keep their place; the one who left is dropped and holds nobody up.
    let parked = api.me_json("second").await;
    assert_eq!(parked["state"], "soldOut", "{parked}");
    assert!(
        parked["pollAfterSeconds"].as_u64().is_some_and(|s| s >= 1),
        "{parked}"
    );
    for _ in 0..12 {
        for u in ["second", "third"] {
            assert_eq!(api.me_json(u).await["state"], "soldOut");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let waiting: Vec<String> = c.zrange(k.queue(), 0, -1).await.unwrap();
    assert_eq!(
        waiting,
        vec!["second", "third"],
        "sold out keeps the line of those still waiting"
    );
    // Seats come back (holds lapsed): the flag goes, the admitted user's slot frees, and the
    // waiting users are admitted in their original order, without having to rejoin.
    let _: () = c.del(k.sold_out()).await.unwrap();
    let _: () = c.zrem(k.active(), "first").await.unwrap();
    assert_eq!(api.me_json("third").await["position"], 2);
    wait_for("second to be admitted", Duration::from_secs(10), || async {
        api.me_json("second").await["state"] == "admitted"
    })
    .await;
    let third = api.me_json("third").await;
    assert_eq!(third["state"], "waiting", "{third}");
    assert_eq!(third["position"], 1, "{third}");
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn shed_heartbeats_pause_the_sweep_for_a_full_timeout() {
    let url = redis_url();
    let event = unique_event("shed");
    let mut spec = EventSpec::new(&event);
    spec.on_sale_at = chrono::Utc::now() + chrono::Duration::hours(1);
    spec.heartbeat_timeout_seconds = 1;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let api = Api::new(&server.base, &event);
    let mut c = redis(&url).await;
    let k = keys(&event);
    assert_eq!(api.join("quiet").await.status(), 201);
    // Some replica could not serve heartbeats for 3 s (what `note_shed` writes under overload).
    let _: () = redis::cmd("SET")
        .arg(k.heartbeats_shed())
        .arg("1")
        .arg("PX")
        .arg(3_000)
        .query_async(&mut c)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let kept: Option<f64> = c.zscore(k.prequeue(), "quiet").await.unwrap();
    assert!(kept.is_some(), "no sweep while heartbeats were being shed");
    // After the marker lapses the user gets one more full timeout, then the sweep goes on.
    wait_for(
        "the silent user to be dropped at last",
        Duration::from_secs(10),
        || async {
            let mut c = redis(&url).await;
            let gone: Option<f64> = c.zscore(k.prequeue(), "quiet").await.unwrap();
            gone.is_none()
        },
    )
    .await;
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn made_up_methods_get_problems_and_leave_metrics_bounded() {
    let url = redis_url();
    let event = unique_event("methods");
    let mut a = args(&url, Some(EventSpec::new(&event).write()));
    a.admission = false;
    let server = Server::start(a).await;
    let c = reqwest::Client::new();
    let route = server.url(&format!("/v1/events/{event}/queue"));
    for i in 0..1_000 {
        let method = reqwest::Method::from_bytes(format!("FROB{i}").as_bytes()).unwrap();
        let r = c.request(method, &route).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("FROB"), "a made-up method became a label value");
    let series = metrics.lines().filter(|l| l.contains("method=\"other\"")).count();
    assert!(series > 0 && series < 50, "{series} series for made-up methods");
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn a_forged_forwarded_for_does_not_escape_the_address_limit() {
    let url = redis_url();
    let event = unique_event("xff");
    let mut a = args(&url, Some(EventSpec::new(&event).write()));
    a.admission = false;
    a.rate_limit_ip = 5;
    a.trusted_proxy_hops = 1;
    let server = Server::start(a).await;
    let c = reqwest::Client::new();
    let route = server.url(&format!("/v1/events/{event}/queue/stats"));
    // One client behind one proxy: it writes a new address every time; the proxy appends the same.
    let mut limited = 0;
    for i in 0..40 {
        let r = c
            .get(&route)
            .header(
                "x-forwarded-for",
                format!("10.9.{}.{}, 203.0.113.9", i / 250, i % 250),
            )
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 20, "only {limited} of 40 requests were limited");
    // A different real client (another right-most entry) is not limited by the first.
    let r = c
        .get(&route)
        .header("x-forwarded-for", "203.0.113.10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn errors_are_problems_and_limits_apply() {
    let url = redis_url();
    let event = unique_event("errors");
    let mut a = args(&url, Some(EventSpec::new(&event).write()));
    a.admission = false;
    a.rate_limit_user = 2;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    let c = &api.client;

    let r = c
        .post(server.url(&format!("/v1/events/{event}/queue")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let forged = tiketi_shared::token::sign_user_token(
        b"not-the-secret",
        "mallory",
        chrono::Utc::now().timestamp() + 60,
    )
    .unwrap();
    let r = c
        .post(server.url(&format!("/v1/events/{event}/queue")))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let expired = tiketi_shared::token::sign_user_token(
        JWT_SECRET.as_bytes(),
        "old",
        chrono::Utc::now().timestamp() - 600,
    )
    .unwrap();
    let r = c
        .post(server.url(&format!("/v1/events/{event}/queue")))
        .bearer_auth(expired)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "expired");

    let r = Api::new(&server.base, "no-such-event").join("alice").await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["type"],
        "https://tiketi.gg/problems/unknown-event"
    );

    // Per-user bucket: 2/s with a burst of 4.
    let mut limited = None;
    for _ in 0..10 {
        let r = api.me("greedy").await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the per-user limit never applied");
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["scope"], "user");
    assert_eq!(
        api.join("patient").await.status(),
        201,
        "other users are not limited"
    );
    server.stop().await;

    // Per-address bucket.
    let mut a = args(&url, Some(EventSpec::new(&event).write()));
    a.admission = false;
    a.rate_limit_ip = 3;
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(api.me(&format!("user-{i}")).await.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn ops_endpoints_work_with_only_the_contract_settings() {
    let url = redis_url();
    let event = unique_event("ops");
    let server = Server::start(args(&url, Some(EventSpec::new(&event).write()))).await;
    let c = reqwest::Client::new();
    assert_eq!(c.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    wait_for("ready", Duration::from_secs(5), || {
        let c = c.clone();
        let u = server.url("/readyz");
        async move { c.get(u).send().await.map(|r| r.status() == 200).unwrap_or(false) }
    })
    .await;
    let doc: serde_json::Value = c
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/events/{event}/queue",
        "/v1/events/{event}/queue/me",
        "/v1/events/{event}/queue/me/stream",
        "/v1/events/{event}/queue/stats",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(doc["components"]["schemas"].get("QueueStatus").is_some());
    Api::new(&server.base, &event).join("metered").await;
    let text = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tiketi_queue_joins_total",
        "tiketi_queue_http_request_duration_seconds_bucket",
        "tiketi_queue_sse_streams",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
    wait_for("depth gauge", Duration::from_secs(5), || {
        let c = c.clone();
        let u = server.url("/metrics");
        let needle = format!("tiketi_queue_admission_leader{{event=\"{event}\"}} 1");
        async move {
            c.get(u)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains(&needle)
        }
    })
    .await;
    server.stop().await;
    cleanup(&url, &event).await;
}

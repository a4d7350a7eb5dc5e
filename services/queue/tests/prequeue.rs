//! The pre-queue: joins before the on-sale instant are shuffled (seeded, recorded, reproducible)
//! into the queue in front of everyone who joins later.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use tiketi_queue::shuffle::shuffle;
use tiketi_queue::store::{ShuffleOutcome, Store};
use tiketi_shared::keys::EventKeys;

fn test_store(url: &str) -> Store {
    Store::new(&tiketi_shared::redis::RedisArgs::new(url), Duration::from_secs(1)).unwrap()
}

/// An on-sale instant an hour away: joins go to the pre-queue.
fn before_on_sale() -> i64 {
    chrono::Utc::now().timestamp_millis() + 3_600_000
}

/// Joins `users` before the on-sale instant (the pre-queue).
async fn join_early<S: AsRef<str>>(store: &Store, k: &EventKeys, users: &[S]) {
    for u in users {
        store
            .status(k, u.as_ref(), before_on_sale(), None, true)
            .await
            .unwrap();
    }
}

/// Takes the event's admission lease as the tests' holder; its fence.
async fn lease(store: &Store, k: &EventKeys) -> u64 {
    store
        .lease(k, "test-holder", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap()
}

async fn prequeue_with(store: &Store, event: &str, users: &[String], seed: u64) -> Vec<String> {
    let k = keys(event);
    join_early(store, &k, users).await;
    let fence = lease(store, &k).await;
    let members = store.prequeue_members(&k).await.unwrap();
    let order = shuffle(&members, seed);
    let past = chrono::Utc::now().timestamp_millis() - 1;
    let outcome = store
        .apply_shuffle(&k, "test-holder", fence, seed, past, &order)
        .await
        .unwrap();
    assert_eq!(outcome, ShuffleOutcome::Moved(users.len() as u64));
    order
}

#[tokio::test]
async fn shuffle_is_a_recorded_reproducible_permutation_in_front_of_later_joiners() {
    let url = redis_url();
    let store = test_store(&url);
    let users: Vec<String> = (0..40).map(|i| format!("early-{i:02}")).collect();
    let (e1, e2) = (unique_event("shuf-a"), unique_event("shuf-b"));

    let order1 = prequeue_with(&store, &e1, &users, 1111).await;
    let order2 = prequeue_with(&store, &e2, &users, 2222).await;
    let mut c = redis(&url).await;
    let q1: Vec<String> = c.zrange(keys(&e1).queue(), 0, -1).await.unwrap();
    let q2: Vec<String> = c.zrange(keys(&e2).queue(), 0, -1).await.unwrap();
    assert_eq!(q1, order1, "the queue holds the shuffled order");
    assert_eq!(q2, order2);
    let mut sorted = q1.clone();
    sorted.sort();
    assert_eq!(sorted, users, "a permutation: nobody lost, nobody added");
    assert_ne!(q1, q2, "different seeds give different orders");
    assert_ne!(q1, users, "the order is not the join order");

    // Audit: the recorded seed and the member set reproduce the order.
    let record = store.shuffle_record(&keys(&e1)).await.unwrap().unwrap();
    assert_eq!(record.seed, 1111);
    assert_eq!(record.count, 40);
    assert_eq!(shuffle(&users, record.seed), q1);

    // Later joiners are FIFO behind the whole pre-queue, and the pre-queue is gone.
    let past = chrono::Utc::now().timestamp_millis() - 1;
    for u in ["late-1", "late-0"] {
        store.status(&keys(&e1), u, past, None, true).await.unwrap();
    }
    let q: Vec<String> = c.zrange(keys(&e1).queue(), 0, -1).await.unwrap();
    assert_eq!(&q[40..], &["late-1".to_owned(), "late-0".to_owned()]);
    let pre: u64 = c.zcard(keys(&e1).prequeue()).await.unwrap();
    assert_eq!(pre, 0);
    // The shuffle happens once.
    let fence = lease(&store, &keys(&e1)).await;
    let again = store
        .apply_shuffle(&keys(&e1), "test-holder", fence, 5, past, &[])
        .await
        .unwrap();
    assert_eq!(again, ShuffleOutcome::AlreadyDone);
    // A stale fence cannot shuffle.
    let e3 = unique_event("shuf-c");
    let k3 = keys(&e3);
    let f3 = lease(&store, &k3).await;
    let stale = store
        .apply_shuffle(&k3, "test-holder", f3 + 1, 5, past, &[])
        .await
        .unwrap();
    assert_eq!(stale, ShuffleOutcome::NotLeader);
    for e in [e1, e2, e3] {
        cleanup(&url, &e).await;
    }
}

#[tokio::test]
async fn the_service_shuffles_at_on_sale_and_admits_in_that_order() {
    let url = redis_url();
    let event = unique_event("onsale");
    let mut spec = EventSpec::new(&event);
    spec.on_sale_at = chrono::Utc::now() + chrono::Duration::milliseconds(2500);
    spec.rate_per_second = 4;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let api = Api::new(&server.base, &event);
    let users: Vec<String> = (0..12).map(|i| format!("fan-{i:02}")).collect();
    for u in &users {
        let body: serde_json::Value = api.join(u).await.json().await.unwrap();
        assert_eq!(body["preQueue"], true, "{body}");
    }
    wait_for("the on-sale shuffle", Duration::from_secs(10), || {
        let api = &api;
        async move { api.stats().await.get("shuffle").is_some() }
    })
    .await;
    let late = api.join("late").await;
    assert_eq!(late.status(), 201);
    let seed = api.stats().await["shuffle"]["seed"].as_u64().unwrap();
    let expected = shuffle(&users, seed);

    // Admission pops from the head, one user per tick at 4/s: the admission order (by expiry)
    // followed by who still waits is the full line.
    wait_for("a few admissions", Duration::from_secs(10), || {
        let api = &api;
        async move { api.stats().await["admittedTotal"].as_u64().unwrap() >= 3 }
    })
    .await;
    let mut c = redis(&url).await;
    let (admitted, waiting): (Vec<String>, Vec<String>) = redis::pipe()
        .atomic()
        .zrange(keys(&event).active(), 0, -1)
        .zrange(keys(&event).queue(), 0, -1)
        .query_async(&mut c)
        .await
        .unwrap();
    let line: Vec<String> = admitted.into_iter().chain(waiting).collect();
    let mut want = expected.clone();
    want.push("late".into());
    assert_eq!(line, want);
    let pos: serde_json::Value = api.me_json("late").await;
    assert_eq!(pos["state"], "waiting");
    server.stop().await;
    cleanup(&url, &event).await;
}

/// People leave the pre-queue (or are swept) while the admitting replica reads it and sends the
/// shuffled list: the shuffle moves those still there in the list's order and records both
/// counts. Before, any change between the read and the script answered "changed" — with a large
/// pre-queue and a few leaves a second, every try, so nobody was ever admitted. A member the
/// list lacks still makes it re-read (nobody is left behind in the pre-queue).
#[tokio::test]
async fn a_shuffle_skips_who_left_since_the_list_was_read_and_nobody_is_left_behind() {
    let url = redis_url();
    let store = test_store(&url);
    let event = unique_event("shuf-left");
    let k = keys(&event);
    let users: Vec<String> = (0..30).map(|i| format!("early-{i:02}")).collect();
    join_early(&store, &k, &users).await;
    let fence = lease(&store, &k).await;
    let members = store.prequeue_members(&k).await.unwrap();
    let order = shuffle(&members, 77);
    let past = chrono::Utc::now().timestamp_millis() - 1;
    // Two leave after the read; one joins (a replica whose config still had a later on-sale).
    let mut c = redis(&url).await;
    for gone in [&order[3], &order[17]] {
        let _: () = c.zrem(k.prequeue(), gone).await.unwrap();
    }
    join_early(&store, &k, &["straggler"]).await;
    let outcome = store
        .apply_shuffle(&k, "test-holder", fence, 77, past, &order)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ShuffleOutcome::Changed,
        "a member the list lacks: re-read"
    );

    // Re-read: the straggler is listed now; two more leave after this read.
    let members = store.prequeue_members(&k).await.unwrap();
    let order = shuffle(&members, 78);
    let left = [order[0].clone(), order[20].clone()];
    for gone in &left {
        let _: () = c.zrem(k.prequeue(), gone).await.unwrap();
    }
    let outcome = store
        .apply_shuffle(&k, "test-holder", fence, 78, past, &order)
        .await
        .unwrap();
    assert_eq!(outcome, ShuffleOutcome::Moved(27));
    let queue: Vec<String> = c.zrange(k.queue(), 0, -1).await.unwrap();
    let expected: Vec<String> = order.iter().filter(|u| !left.contains(u)).cloned().collect();
    assert_eq!(queue, expected, "the others keep the shuffled order");
    let record = store.shuffle_record(&k).await.unwrap().unwrap();
    assert_eq!((record.seed, record.count, record.listed), (78, 27, 29));
    let pre: u64 = c.zcard(k.prequeue()).await.unwrap();
    assert_eq!(pre, 0);
    cleanup(&url, &event).await;
}

/// Between the on-sale instant and the shuffle (the admitting replica's next step) the pre-queue
/// is still apart; whoever joins then stands behind all of it once it moves, and is told so
/// (they were told 1st, 2nd… and found themselves behind the whole pre-queue a moment later).
#[tokio::test]
async fn a_joiner_before_the_shuffle_is_placed_behind_the_whole_pre_queue() {
    use tiketi_queue::store::Standing;
    let url = redis_url();
    let store = test_store(&url);
    let event = unique_event("shuf-gap");
    let k = keys(&event);
    join_early(&store, &k, &["early-0", "early-1", "early-2"]).await;
    // The on-sale has passed, the shuffle not yet run: two join the queue.
    let past = chrono::Utc::now().timestamp_millis() - 1;
    let first = store.status(&k, "late-0", past, None, true).await.unwrap();
    let second = store.status(&k, "late-1", past, None, true).await.unwrap();
    let again = store.status(&k, "late-0", past, None, false).await.unwrap();
    let rank = |o: &tiketi_queue::store::Observed| match o.standing {
        Standing::Waiting { rank, .. } => rank,
        ref other => panic!("not waiting: {other:?}"),
    };
    assert_eq!((rank(&first), rank(&second), rank(&again)), (3, 4, 3));
    // After the shuffle the queue itself says the same.
    let fence = lease(&store, &k).await;
    let members = store.prequeue_members(&k).await.unwrap();
    let order = shuffle(&members, 9);
    store
        .apply_shuffle(&k, "test-holder", fence, 9, past, &order)
        .await
        .unwrap();
    let after = store.status(&k, "late-1", past, None, false).await.unwrap();
    assert_eq!(rank(&after), 4);
    cleanup(&url, &event).await;
}

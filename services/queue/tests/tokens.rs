//! Admission tokens from the queue: valid ones verify with the admission key; forged, expired,
//! other-user and other-event tokens are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tiketi_shared::token::{AdmissionKeys, TokenError};

#[tokio::test]
async fn admission_tokens_verify_only_for_their_user_event_and_lifetime() {
    let url = redis_url();
    let event = unique_event("tok");
    let mut spec = EventSpec::new(&event);
    spec.token_ttl_seconds = 2;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let api = Api::new(&server.base, &event);
    for u in ["ada", "bob"] {
        assert_eq!(api.join(u).await.status(), 201);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (token, exp_ms) = loop {
        let me = api.me_json("ada").await;
        if me["state"] == "admitted" {
            break (
                me["admission"]["token"].as_str().unwrap().to_owned(),
                me["admission"]["expiresAtMs"].as_i64().unwrap(),
            );
        }
        assert!(tokio::time::Instant::now() < deadline, "ada was never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let keys = AdmissionKeys::new(ADMISSION_SECRET.as_bytes());
    let now = chrono::Utc::now().timestamp_millis();
    let claims = keys.verify(Some(&token), &event, "ada", now).unwrap();
    assert_eq!(claims.exp_ms, exp_ms);
    assert!(exp_ms > now && exp_ms <= now + 2_100);

    assert_eq!(
        keys.verify(Some(&token), &event, "bob", now),
        Err(TokenError::WrongUser)
    );
    assert!(matches!(
        keys.verify(Some(&token), "other-event", "ada", now),
        Err(TokenError::WrongEvent { .. })
    ));
    let forged = AdmissionKeys::new(b"guessed")
        .issue(&event, "ada", now, now + 60_000)
        .unwrap();
    assert_eq!(
        keys.verify(Some(&forged), &event, "ada", now),
        Err(TokenError::Invalid)
    );
    // A user token is not an admission token.
    assert_eq!(
        keys.verify(Some(&user_token("ada")), &event, "ada", now),
        Err(TokenError::Invalid)
    );
    assert_eq!(
        keys.verify(Some(&token), &event, "ada", exp_ms),
        Err(TokenError::Expired)
    );

    // The admission itself expires: ada is no longer admitted and the token is past its time.
    wait_for("ada's admission to lapse", Duration::from_secs(10), || {
        let api = &api;
        async move { api.me("ada").await.status() == 404 }
    })
    .await;
    let later = chrono::Utc::now().timestamp_millis();
    assert_eq!(
        keys.verify(Some(&token), &event, "ada", later),
        Err(TokenError::Expired)
    );
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn the_queue_refuses_to_start_with_a_weak_signing_key() {
    let url = redis_url();
    for (jwt, admission, named) in [
        ("", ADMISSION_SECRET, "TIKETI_JWT_SECRET"),
        (JWT_SECRET, "short", "TIKETI_ADMISSION_SECRET"),
        (
            JWT_SECRET,
            "CHANGE_ME_ADMISSION_HS256_KEY",
            "TIKETI_ADMISSION_SECRET",
        ),
    ] {
        let mut a = args(&url, None);
        a.jwt_secret = Some(jwt.into());
        a.admission_secret = Some(admission.into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = tokio::time::timeout(
            Duration::from_secs(5),
            tiketi_queue::server::serve(a, listener, std::future::pending()),
        )
        .await
        .expect("serve returns at once with a weak key");
        let err = started.expect_err("a weak key must not start the service");
        assert!(err.to_string().contains(named), "{named}: {err:#}");
    }
}

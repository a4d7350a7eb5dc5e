//! Mints a user token and an admission token for local walk-throughs (plays the platform and the
//! queue). Usage: `cargo run -p tiketi-reservation --example tokens -- <event> <user>`; reads
//! TIKETI_JWT_SECRET and TIKETI_ADMISSION_SECRET; prints `USER_TOKEN=…` and `ADMISSION_TOKEN=…`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let mut args = std::env::args().skip(1);
    let event = args.next().expect("usage: tokens <event> <user>");
    let user = args.next().expect("usage: tokens <event> <user>");
    let jwt = std::env::var("TIKETI_JWT_SECRET").expect("TIKETI_JWT_SECRET");
    let adm = std::env::var("TIKETI_ADMISSION_SECRET").expect("TIKETI_ADMISSION_SECRET");
    let now = chrono::Utc::now().timestamp_millis();
    let user_token = tiketi_shared::token::sign_user_token(jwt.as_bytes(), &user, now / 1000 + 3600).unwrap();
    let admission = tiketi_shared::token::AdmissionKeys::new(adm.as_bytes())
        .issue(&event, &user, now, now + 600_000)
        .unwrap();
    println!("USER_TOKEN={user_token}");
    println!("ADMISSION_TOKEN={admission}");
}

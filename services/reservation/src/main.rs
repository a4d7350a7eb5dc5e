//! `tiketi-reservation`: see the library crate.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tiketi_shared::telemetry::init("info,sqlx=warn,tower_http=info");
    let settings = tiketi_reservation::Settings::parse();
    tiketi_reservation::server::run(settings).await
}

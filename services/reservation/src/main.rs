//! `tiketi-reservation`: see the library crate.
#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc instead of the system allocator: a hold allocates and frees many small buffers
/// (HTTP, JSON, tokens, Redis and PostgreSQL messages) across two worker threads, and glibc's
/// malloc and free were about an eighth of the service's CPU per hold.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tiketi_shared::telemetry::init("info,sqlx=warn,tower_http=info");
    let settings = tiketi_reservation::Settings::parse();
    tiketi_reservation::server::run(settings).await
}

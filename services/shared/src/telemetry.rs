//! Logging setup shared by every binary: JSON lines in production (`TIKETI_LOG_FORMAT=json`, the
//! default when not attached to a terminal), human-readable text otherwise. `RUST_LOG` filters.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match std::env::var("TIKETI_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: try_init just reports the existing subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

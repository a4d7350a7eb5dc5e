//! The process runtime every tiketi binary shares: logging (JSON lines in production —
//! `TIKETI_LOG_FORMAT=json`, the default when not attached to a terminal —, human-readable text
//! otherwise; `RUST_LOG` filters) and the shutdown signal.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// Logging with the format from `TIKETI_LOG_FORMAT` (`json` | `text`; unset: JSON unless stderr
/// is a terminal).
pub fn init(default_filter: &str) {
    let json = match std::env::var("TIKETI_LOG_FORMAT").as_deref() {
        Ok("json") => Some(true),
        Ok("text") => Some(false),
        _ => None,
    };
    init_with(default_filter, json);
}

/// Logging in JSON lines (`Some(true)`), text (`Some(false)`) or, with `None`, JSON unless stderr
/// is a terminal. `RUST_LOG` overrides `default_filter`.
pub fn init_with(default_filter: &str, json: Option<bool>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = json.unwrap_or_else(|| !std::io::stderr().is_terminal());
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: try_init just reports the existing subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C: the shutdown trigger of every tiketi
/// process. If SIGTERM cannot be listened for, Ctrl-C alone (and the error is logged).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

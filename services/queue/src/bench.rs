//! Helpers for the benchmark (`e2e/bench/queue.sh`): the empty-endpoint baseline and user tokens.

use std::io::Write;
use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::post;

/// An axum server on the same runtime whose join route does no work: the ceiling the real join
/// is measured against.
pub async fn empty(
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/v1/events/{event}/queue",
            post(|| async { (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}") }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Writes `count` user tokens, one a line, for users `<prefix>0 … <prefix>{count-1}`.
pub fn tokens(
    secret: &str,
    count: u64,
    prefix: &str,
    ttl: std::time::Duration,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let exp = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs())?;
    for i in 0..count {
        let t = tiketi_shared::token::sign_user_token(secret.as_bytes(), &format!("{prefix}{i}"), exp)?;
        writeln!(out, "{t}")?;
    }
    Ok(())
}

/// Opens `count` SSE streams (tokens from `tokens`, one a line) against `addr` and waits for each
/// stream's first event. Returns the open connections and the failures by kind.
pub async fn streams(
    addr: SocketAddr,
    event: &str,
    tokens: &[String],
    count: usize,
) -> (
    Vec<tokio::net::TcpStream>,
    std::collections::BTreeMap<String, usize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens.iter().take(count) {
        let gate = gate.clone();
        let req = format!(
            "GET /v1/events/{event}/queue/me/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|_| "closed".to_owned())?;
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write: {}", e.kind()))?;
            let mut buf = Vec::with_capacity(2048);
            let mut chunk = [0u8; 1024];
            loop {
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read: {}", e.kind()))?;
                if n == 0 {
                    return Err("closed early".to_owned());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if !text.starts_with("HTTP/1.1 200") && text.contains("\r\n") {
                    return Err(text.lines().next().unwrap_or("").to_owned());
                }
                // The body is chunked: look for a complete event after the headers.
                if let Some(end) = text.find("\r\n\r\n")
                    && let Some(ev) = text[end..].find("event:")
                    && text[end + ev..].contains("\n\n")
                {
                    return Ok(s);
                }
            }
        });
    }
    let mut open = Vec::with_capacity(count);
    let mut failed = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => open.push(s),
            Ok(Err(kind)) => *failed.entry(kind).or_insert(0) += 1,
            Err(_) => *failed.entry("panicked".to_owned()).or_insert(0) += 1,
        }
    }
    (open, failed)
}

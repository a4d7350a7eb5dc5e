//! HTTP pieces every tiketi server shares: serving with a drain on shutdown
//! ([`serve_draining`]), the request-latency histogram ([`RequestDurations`], recorded by
//! [`track_requests`]), the `/metrics` response and the OpenAPI bearer scheme.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::problem::Problem;

/// How a server stops ([`serve_draining`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// After the shutdown signal, how long readiness answers 503 while the listener still accepts,
    /// so load balancers take the pod out before it stops accepting (`TIKETI_DRAIN_DELAY`).
    pub delay: Duration,
    /// After the listener closes, how long in-flight requests get before the server returns
    /// anyway (`TIKETI_SHUTDOWN_TIMEOUT`).
    pub timeout: Duration,
}

/// How [`serve_draining`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request finished within the shutdown timeout.
    Finished,
    /// The shutdown timeout ran out with requests still in flight; they were abandoned.
    TimedOut,
}

/// Serves `app` on `listener` (with `ConnectInfo<SocketAddr>`) until `shutdown` resolves, then
/// drains the way every tiketi service does on SIGTERM:
///
/// 1. `not_ready` is called (the service's `/readyz` answers 503 from then on) and the listener
///    keeps accepting for `drain.delay`, while load balancers stop sending new requests;
/// 2. `closing` is called (end long-lived responses such as event streams, stop background
///    work) and the listener closes;
/// 3. in-flight requests get `drain.timeout` to finish; past it this returns
///    [`Drained::TimedOut`] without waiting for them.
///
/// So it returns at most `drain.delay + drain.timeout` after `shutdown` resolves.
pub async fn serve_draining(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Drain,
    not_ready: impl FnOnce() + Send + 'static,
    closing: impl FnOnce() + Send + 'static,
) -> std::io::Result<Drained> {
    let Drain { delay, timeout } = drain;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        not_ready();
        tracing::info!(drain_delay = ?delay, "shutdown requested: /readyz answers 503; the listener closes after the drain delay");
        tokio::time::sleep(delay).await;
        closing();
        tracing::info!(shutdown_timeout = ?timeout, "closing the listener; finishing in-flight requests");
        let _ = closed_tx.send(());
    };
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(signal)
        .into_future();
    let forced = async move {
        match closed_rx.await {
            Ok(()) => tokio::time::sleep(timeout).await,
            // The signal future is gone without closing: the server itself has ended.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = server => {
            r?;
            tracing::info!("in-flight requests finished");
            Ok(Drained::Finished)
        }
        () = forced => {
            tracing::warn!(shutdown_timeout = ?timeout, "in-flight requests did not finish within the shutdown timeout; exiting anyway");
            Ok(Drained::TimedOut)
        }
    }
}

/// Name of the request-latency histogram; each service registers its [`RequestDurations`] under
/// it, below its own prefix: `tiketi_queue_http_request_duration_seconds`,
/// `tiketi_reservation_http_request_duration_seconds`.
pub const REQUEST_DURATION: &str = "http_request_duration_seconds";

/// Help text of [`REQUEST_DURATION`].
pub const REQUEST_DURATION_HELP: &str =
    "Latency of HTTP requests to the API routes, by method, route template and status class";

/// Labels of the request-latency histogram; every value comes from a bounded set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// [`method_label`]: a standard method or `other`.
    pub method: &'static str,
    /// The matched route template (`/v1/events/{event}/queue`), never the raw path.
    pub route: String,
    /// [`status_class`]: `1xx` … `5xx`.
    pub status_class: &'static str,
}

/// The request-latency histogram both services export (buckets 0.5 ms … ~16 s, doubling).
/// Register [`RequestDurations::family`] as [`REQUEST_DURATION`] and record with
/// [`track_requests`].
#[derive(Clone, Debug)]
pub struct RequestDurations(Family<RequestLabels, Histogram, fn() -> Histogram>);

impl Default for RequestDurations {
    fn default() -> Self {
        Self(Family::new_with_constructor(latency_histogram))
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl RequestDurations {
    /// The metric to register (a handle on the same series).
    pub fn family(&self) -> Family<RequestLabels, Histogram, fn() -> Histogram> {
        self.0.clone()
    }

    /// Records one request answered with `status` on `route` after `elapsed`.
    pub fn observe(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        self.0
            .get_or_create(&RequestLabels {
                method: method_label(method),
                route: route.to_owned(),
                status_class: status_class(status),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(durations, track_requests)`, as the outermost
/// layer of the API routes) recording each request's latency in [`RequestDurations`]. Requests that
/// matched no route are not recorded, so made-up paths cannot grow the label set.
pub async fn track_requests(State(durations): State<RequestDurations>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let res = next.run(req).await;
    if let Some(route) = route {
        durations.observe(&method, &route, res.status(), started.elapsed());
    }
    res
}

/// The `status_class` label of request metrics: `1xx`, `2xx`, `3xx`, `4xx` or `5xx`.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Content type of the Prometheus/OpenMetrics text exposition.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` as a `/metrics` response (500 problem+json if encoding fails).
pub fn metrics_response(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics-encoding",
            "could not encode metrics",
        )
        .into_response(),
    }
}

/// The `method` label of request metrics: the standard methods by name, anything else `other`,
/// so made-up methods (which reach the 405 fallback) cannot grow a metric's label set.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// OpenAPI modifier declaring the `bearer` (JWT) security scheme the handlers refer to.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"FROB").unwrap()), "other");
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "other");
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(StatusCode::CREATED), "2xx");
        assert_eq!(status_class(StatusCode::NOT_MODIFIED), "3xx");
        assert_eq!(status_class(StatusCode::TOO_MANY_REQUESTS), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
        assert_eq!(status_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One `GET` on its own connection; the raw response.
    async fn get_raw(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        conn.read_to_string(&mut out).await?;
        Ok(out)
    }

    struct Running {
        addr: SocketAddr,
        shutdown: tokio::sync::oneshot::Sender<()>,
        closing: tokio::sync::oneshot::Receiver<()>,
        not_ready: Arc<AtomicBool>,
        durations: RequestDurations,
        done: tokio::task::JoinHandle<std::io::Result<Drained>>,
    }

    /// A server with `/slow` (answers after 2 s), `/hang` (never answers) and `/readyz`
    /// (503 once `not_ready` ran), draining with `drain`.
    async fn start(drain: Drain) -> Running {
        let not_ready = Arc::new(AtomicBool::new(false));
        let durations = RequestDurations::default();
        let ready = not_ready.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    "done"
                }),
            )
            .route("/hang", get(std::future::pending::<&'static str>))
            .layer(axum::middleware::from_fn_with_state(
                durations.clone(),
                track_requests,
            ))
            .route(
                "/readyz",
                get(move || {
                    let draining = ready.load(Ordering::Acquire);
                    async move {
                        if draining {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        }
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let (closed, closing) = tokio::sync::oneshot::channel::<()>();
        let flag = not_ready.clone();
        let done = tokio::spawn(serve_draining(
            listener,
            app,
            async move {
                let _ = signal.await;
            },
            drain,
            move || flag.store(true, Ordering::Release),
            move || {
                let _ = closed.send(());
            },
        ));
        Running {
            addr,
            shutdown,
            closing,
            not_ready,
            durations,
            done,
        }
    }

    #[tokio::test]
    async fn drains_readiness_first_then_lets_in_flight_requests_finish() {
        // Generous margins: the machine may be busy. /slow is asked 100 ms before the shutdown,
        // so it is still running when the listener closes 1 s after it.
        let drain = Drain {
            delay: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        };
        let s = start(drain).await;
        assert!(
            get_raw(s.addr, "/readyz")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        let slow = tokio::spawn(get_raw(s.addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        s.shutdown.send(()).unwrap();
        // During the drain delay the listener still accepts, and readiness says 503.
        let mut readyz = String::new();
        while asked.elapsed() < Duration::from_millis(800) {
            readyz = get_raw(s.addr, "/readyz").await.unwrap();
            if readyz.starts_with("HTTP/1.1 503") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
        assert!(s.not_ready.load(Ordering::Acquire));
        // Then the listener closes while /slow is still being worked on …
        s.closing.await.unwrap();
        assert!(asked.elapsed() >= drain.delay);
        let refused = async {
            while get_raw(s.addr, "/readyz").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), refused)
            .await
            .expect("the listener closes after the drain delay");
        // … which still gets its answer, and then the server returns.
        let answer = slow.await.unwrap().unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );
        let drained = s.done.await.unwrap().unwrap();
        assert_eq!(drained, Drained::Finished);
        assert!(asked.elapsed() < drain.delay + drain.timeout);
        // The API route was recorded with its template and status class; the probe (outside the
        // layer) was not.
        let family = s.durations.family();
        let mut text = String::new();
        let mut registry = Registry::default();
        registry.sub_registry_with_prefix("tiketi_test").register(
            REQUEST_DURATION,
            REQUEST_DURATION_HELP,
            family,
        );
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"tiketi_test_http_request_duration_seconds_count{method="GET",route="/slow",status_class="2xx"} 1"#),
            "{text}"
        );
        assert!(!text.contains("readyz"), "{text}");
    }

    #[tokio::test]
    async fn a_hung_request_does_not_hold_the_shutdown_past_its_timeout() {
        let drain = Drain {
            delay: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
        };
        let s = start(drain).await;
        let hung = tokio::spawn(get_raw(s.addr, "/hang"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        s.shutdown.send(()).unwrap();
        let drained = tokio::time::timeout(Duration::from_secs(5), s.done)
            .await
            .expect("serve_draining returns despite the hung request")
            .unwrap()
            .unwrap();
        let took = asked.elapsed();
        assert_eq!(drained, Drained::TimedOut);
        assert!(took >= drain.delay + drain.timeout, "{took:?}");
        assert!(
            took < drain.delay + drain.timeout + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(!hung.is_finished(), "the hung request never got an answer");
        hung.abort();
    }
}

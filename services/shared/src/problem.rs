//! RFC 9457 problem details: every 4xx/5xx body of both services. Outages carry `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem kind, e.g. `https://tiketi.gg/problems/seats-taken`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Problem-specific members (for example `seats` for a conflict).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://tiketi.gg/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            extra: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extra.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// A dependency (Redis, PostgreSQL) is unreachable or too slow: 503 with Retry-After.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail).retry_after(1)
    }

    /// Too many requests from one client: 429 with Retry-After.
    pub fn rate_limited(secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many requests; slow down",
        )
        .retry_after(secs)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Middleware (`axum::middleware::from_fn`) that makes every error answer a problem: a 4xx/5xx
/// with no body type or a plain-text one — axum's own 405 and path rejections, the body-limit
/// 413, the request-timeout backstop's bare 503 — is replaced by a [`Problem`] for its status,
/// keeping `Allow` and `Retry-After` (a 503 without one gets `Retry-After: 1`).
pub async fn problem_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    // Bare = no body type or plain text (what axum and tower-http write); a JSON body (a
    // problem, or /readyz's list of what is wrong) is the handler's own answer and stays.
    let bare = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/"));
    if !(status.is_client_error() || status.is_server_error()) || !bare {
        return res;
    }
    let (slug, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "this route does not take that method"),
        StatusCode::NOT_FOUND => ("not-found", "no such route"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "the request body is too large"),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the request took too long; retry shortly"),
        StatusCode::REQUEST_TIMEOUT => ("request-timeout", "the request took too long; retry shortly"),
        s if s.is_client_error() => ("bad-request", "the request could not be read"),
        _ => ("internal", "the request failed"),
    };
    let mut problem = Problem::new(status, slug, detail);
    let retry = res
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        problem = problem.retry_after(retry.unwrap_or(1));
    } else if let Some(secs) = retry {
        problem = problem.retry_after(secs);
    }
    let allow = res.headers().get(header::ALLOW).cloned();
    let mut out = problem.into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    async fn call(router: Router, method: &str, uri: &str) -> Response {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        router.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn bare_errors_become_problems() {
        let app = || {
            Router::new()
                .route("/ok", get(|| async { "ok" }))
                .route("/slow", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
                .route(
                    "/json",
                    get(|| async {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(serde_json::json!({"ok": false})),
                        )
                    }),
                )
                .layer(axum::middleware::from_fn(problem_errors))
        };
        let res = call(app(), "FROB", "/ok").await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(res.headers().contains_key(header::ALLOW));
        let res = call(app(), "GET", "/slow").await;
        assert_eq!(res.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let res = call(app(), "GET", "/json").await;
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/json",
            "a JSON answer stays"
        );
        let res = call(app(), "GET", "/ok").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_ne!(res.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}

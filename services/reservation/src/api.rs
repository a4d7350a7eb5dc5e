//! The HTTP surface: routes, request framing, the OpenAPI document, health and metrics endpoints.
//! Handlers only translate between HTTP and [`AppState`] operations.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tiketi_shared::http::BearerAuth;
use tiketi_shared::problem::Problem;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::domain::{Counts, SeatStatus};
use crate::model::{Availability, Health, Hold, HoldRequest, Order, Seat, SeatMap};
use crate::service::{Answer, AppState, Caller};

pub const ADMISSION_HEADER: &str = "x-admission-token";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Largest request body accepted (a hold names a handful of seats).
const BODY_LIMIT: usize = 16 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tiketi reservation",
        description = "Seat holds (Redis) and orders (PostgreSQL) for ticket on-sales. Errors are \
                       application/problem+json (RFC 9457); outages answer 503 with Retry-After."
    ),
    paths(seat_map, availability, create_hold, my_holds, release_hold, confirm_hold, get_order, healthz, readyz),
    components(schemas(HoldRequest, Hold, Order, Seat, SeatMap, Availability, Counts, SeatStatus, Health, Problem)),
    modifiers(&BearerAuth),
    tags((name = "reservation", description = "Seats, holds and orders"), (name = "ops", description = "Probes"))
)]
pub struct ApiDoc;

pub fn router(state: Arc<AppState>, request_timeout: Duration) -> Router {
    let api = Router::new()
        .route("/v1/events/{event}/seats", get(seat_map))
        .route("/v1/events/{event}/availability", get(availability))
        .route("/v1/events/{event}/holds", post(create_hold))
        .route("/v1/events/{event}/holds/me", get(my_holds))
        .route("/v1/holds/{hold}", delete(release_hold))
        .route("/v1/holds/{hold}/confirm", post(confirm_hold))
        .route("/v1/orders/{order}", get(get_order))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), limit_inflight))
        .layer(TraceLayer::new_for_http())
        // A backstop only: every Redis and PostgreSQL call has its own, shorter bound.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        // Outermost on the API routes (the probes and /metrics are not recorded), so the
        // overload and timeout 503s are measured too.
        .layer(middleware::from_fn_with_state(
            state.metrics.request_duration.clone(),
            tiketi_shared::http::track_requests,
        ));
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi));
    api.merge(ops)
        .fallback(not_found)
        .layer(middleware::from_fn(tiketi_shared::problem::problem_errors))
        .with_state(state)
}

/// A request's in-flight slot. A handler whose work runs on after the client is gone (a hold, a
/// release: see `create_hold`) takes it into that work, so the slot is given back when the work
/// ends, not when the client leaves: clients that time out and retry cannot pile up detached
/// work past `TIKETI_MAX_INFLIGHT`.
#[derive(Clone)]
struct InflightSlot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl InflightSlot {
    fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

async fn limit_inflight(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    match state.admit().await {
        Ok(permit) => {
            req.extensions_mut()
                .insert(InflightSlot(Arc::new(std::sync::Mutex::new(Some(permit)))));
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn json_problem(rejection: JsonRejection) -> Problem {
    let status = rejection.status();
    let slug = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
        _ => "malformed-body",
    };
    Problem::new(status, slug, rejection.body_text())
}

fn answer(a: Answer) -> Response {
    let Answer {
        status,
        body,
        replayed,
    } = a;
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut res = (status, bytes).into_response();
    let ct = if status.is_success() {
        "application/json"
    } else {
        tiketi_shared::problem::CONTENT_TYPE
    };
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if replayed {
        res.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    res
}

/// The seat map: every seat with its status, plus counts. Cached for about a second.
#[utoipa::path(
    get, path = "/v1/events/{event}/seats", tag = "reservation",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Seat map", body = SeatMap),
        (status = 404, description = "Unknown event", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Dependency unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn seat_map(
    State(state): State<Arc<AppState>>,
    Path(event): Path<String>,
) -> Result<Response, Problem> {
    let body = state.seat_map_json(&event).await?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

/// Sold / held / available counts. Cached for about a second; also published to Redis.
#[utoipa::path(
    get, path = "/v1/events/{event}/availability", tag = "reservation",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Availability counts", body = Availability),
        (status = 404, description = "Unknown event", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Dependency unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn availability(
    State(state): State<Arc<AppState>>,
    Path(event): Path<String>,
) -> Result<Json<Availability>, Problem> {
    state.availability(&event).await.map(Json)
}

/// Hold seats, all or none, for `holdTtlSeconds`. Needs the user's bearer token and an admission
/// token the queue issued to that user for this event.
#[utoipa::path(
    post, path = "/v1/events/{event}/holds", tag = "reservation",
    params(
        ("event" = String, Path, description = "Event id"),
        ("X-Admission-Token" = String, Header, description = "Admission token from the waiting room"),
    ),
    request_body = HoldRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Seats held", body = Hold),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid user token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing, forged, expired or someone else's admission token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown event", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Seats taken (listed in `seats`) or per-user seat limit reached", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown seats or too many seats", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Dependency unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_hold(
    State(state): State<Arc<AppState>>,
    Path(event): Path<String>,
    slot: Option<Extension<InflightSlot>>,
    headers: HeaderMap,
    body: Result<Json<HoldRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Hold>), Problem> {
    // Authenticate before looking at the body, so a bad token is never masked by a bad body.
    let verified = if state.initialized.load(Ordering::Acquire) {
        let user = state
            .users
            .verify_bearer(header(&headers, "authorization"))
            .map_err(|e| {
                Problem::unauthorized(format!("a valid bearer user token is required: {e}"))
                    .with("reason", e.reason())
            })?;
        Some(user)
    } else {
        None
    };
    let Json(req) = body.map_err(json_problem)?;
    // Run to completion even if the client goes away: a hold cancelled between its Redis and
    // PostgreSQL steps would strand its locks until the TTL.
    let authorization = match verified {
        Some(_) => None,
        None => header(&headers, "authorization").map(str::to_owned),
    };
    let admission = header(&headers, ADMISSION_HEADER).map(str::to_owned);
    let permit = slot.and_then(|Extension(s)| s.take());
    let hold = tokio::spawn(async move {
        let _permit = permit;
        let caller = match verified {
            Some(user) => Caller::Verified(user),
            None => Caller::Bearer(authorization.as_deref()),
        };
        state.hold(&event, caller, admission.as_deref(), &req.seats).await
    })
    .await
    .map_err(|_| Problem::unavailable("the hold was interrupted; retry"))??;
    Ok((StatusCode::CREATED, Json(hold)))
}

/// Release a hold: its seats become available at once. Releasing twice is fine.
#[utoipa::path(
    delete, path = "/v1/holds/{hold}", tag = "reservation",
    params(("hold" = String, Path, description = "Hold id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Released"),
        (status = 401, description = "Missing or invalid user token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's hold", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hold", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The hold is already an order", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Dependency unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn release_hold(
    State(state): State<Arc<AppState>>,
    Path(hold): Path<String>,
    slot: Option<Extension<InflightSlot>>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let authorization = header(&headers, "authorization").map(str::to_owned);
    let permit = slot.and_then(|Extension(s)| s.take());
    tokio::spawn(async move {
        let _permit = permit;
        state.release(&hold, authorization.as_deref()).await
    })
    .await
    .map_err(|_| Problem::unavailable("the release was interrupted; retry"))??;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirm a hold into an order, in one PostgreSQL transaction. `Idempotency-Key` is required:
/// a retry with the same key gets the same answer (header `Idempotent-Replayed: true`); the same
/// key for a different hold is 422. A hold whose Redis lock lapsed is still confirmed if its seats
/// are free in PostgreSQL.
#[utoipa::path(
    post, path = "/v1/holds/{hold}/confirm", tag = "reservation",
    params(
        ("hold" = String, Path, description = "Hold id (UUID)"),
        ("Idempotency-Key" = String, Header, description = "Client-chosen key, 1-255 visible ASCII characters"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Order created (or replayed)", body = Order),
        (status = 400, description = "Missing or invalid Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid user token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's hold", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hold", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Seats sold to someone else (listed), hold released or already an order", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Dependency unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn confirm_hold(
    State(state): State<Arc<AppState>>,
    Path(hold): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let a = state
        .confirm(
            &hold,
            header(&headers, "authorization"),
            header(&headers, IDEMPOTENCY_HEADER),
        )
        .await?;
    Ok(answer(a))
}

/// The calling user's live holds of an event, newest first: a client whose hold request timed
/// out learns here whether (and which) hold it got, instead of holding twice.
#[utoipa::path(
    get, path = "/v1/events/{event}/holds/me", tag = "reservation",
    params(("event" = String, Path, description = "Event id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Live holds of the user (possibly none)", body = Vec<Hold>),
        (status = 401, description = "Missing or invalid user token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown event", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Dependency unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn my_holds(
    State(state): State<Arc<AppState>>,
    Path(event): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<Hold>>, Problem> {
    state
        .my_holds(&event, header(&headers, "authorization"))
        .await
        .map(Json)
}

/// An order of the calling user.
#[utoipa::path(
    get, path = "/v1/orders/{order}", tag = "reservation",
    params(("order" = String, Path, description = "Order id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 401, description = "Missing or invalid user token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order for this user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Dependency unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_order(
    State(state): State<Arc<AppState>>,
    Path(order): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Order>, Problem> {
    state
        .order(&order, header(&headers, "authorization"))
        .await
        .map(Json)
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        problems: vec![],
    })
}

/// Readiness: migrations applied, inventory loaded, Redis reached since start, not draining. A
/// store that stops answering later does not make the replica unready (see
/// `AppState::readiness`): the answer is 200 with status `degraded` and the store in `problems`.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready (`ready`), or ready with a store unreachable at the moment (`degraded`, named in `problems`)", body = Health),
        (status = 503, description = "Not ready; `problems` says why", body = Health),
    )
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let r = state.readiness().await;
    let status = match (r.ready, r.problems.is_empty()) {
        (true, true) => "ready",
        (true, false) => "degraded",
        (false, _) => "not-ready",
    };
    let body = Json(Health {
        status: status.into(),
        problems: r.problems,
    });
    if r.ready {
        return (StatusCode::OK, body).into_response();
    }
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.refresh_pool_gauges();
    tiketi_shared::http::metrics_response(&state.registry)
}

/// The OpenAPI document, plus OpenAPI links (a hold's id feeds confirm and release, an order's
/// id feeds the order read) that clients and Schemathesis' stateful phase follow. The links are
/// added as JSON because utoipa 5 serialises `Link.operationId` in snake case.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let links = [
        (
            "/v1/events/{event}/holds",
            "ConfirmHold",
            "confirm_hold",
            "hold",
            "$response.body#/holdId",
        ),
        (
            "/v1/events/{event}/holds",
            "ReleaseHold",
            "release_hold",
            "hold",
            "$response.body#/holdId",
        ),
        (
            "/v1/holds/{hold}/confirm",
            "GetOrder",
            "get_order",
            "order",
            "$response.body#/orderId",
        ),
    ];
    for (path, name, operation, param, expr) in links {
        if let Some(response) =
            doc.pointer_mut(&format!("/paths/{}/post/responses/201", path.replace('/', "~1")))
            && let Some(response) = response.as_object_mut()
        {
            let entry = response.entry("links").or_insert_with(|| serde_json::json!({}));
            entry[name] = serde_json::json!({"operationId": operation, "parameters": {param: expr}});
        }
    }
    doc
}

async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn openapi_documents_every_route_with_links() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/events/{event}/seats",
            "/v1/events/{event}/availability",
            "/v1/events/{event}/holds",
            "/v1/holds/{hold}",
            "/v1/holds/{hold}/confirm",
            "/v1/orders/{order}",
        ] {
            assert!(paths.contains_key(p), "{p} missing: {:?}", paths.keys());
        }
        let hold = &doc["paths"]["/v1/events/{event}/holds"]["post"];
        assert_eq!(
            hold["responses"]["201"]["links"]["ConfirmHold"]["operationId"], "confirm_hold",
            "{}",
            hold["responses"]["201"]
        );
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}

//! `GET /tasks/{flow_id}`: read the request, ask the lookup (and hold a long poll), render the
//! answer with headers that say how it was served and for how long it may be reused.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use tokio::time::Instant;

use super::auth::authenticate;
use super::grammar::{caller_timeout, requested_wait, Wait};
use super::state::AppState;
use crate::answer::AnswerKind;
use crate::error::ApiError;
use crate::lookup::{Lookup, LookupContext, LookupService, WaitService};
use crate::support::ceil_secs;
use crate::task::FlowId;
use crate::telemetry::{RequestId, Served, UpstreamRequestId};
use crate::upstream::UpstreamClient;

/// `Allow` of the task route.
const TASK_METHODS: &str = "GET, HEAD";

/// The flow id text of a request under `/tasks`: what follows `/tasks/` in the matched
/// (percent-decoded) path. `/tasks` itself is no route, and only GET and HEAD are served.
fn flow_id_text(req: &HttpRequest) -> Result<&str, ApiError> {
    let text = req
        .match_info()
        .unprocessed()
        .strip_prefix('/')
        .ok_or(ApiError::RouteNotFound)?;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ApiError::MethodNotAllowed {
            allow: TASK_METHODS,
        });
    }
    Ok(text)
}

/// Everything under `/tasks`: GET and HEAD of `/tasks/{flow_id}`.
pub(super) async fn get_task(
    req: HttpRequest,
    state: web::Data<AppState>,
    lookup: web::Data<LookupService>,
    waits: web::Data<WaitService>,
    client: web::Data<UpstreamClient>,
) -> Result<HttpResponse, ApiError> {
    let raw = flow_id_text(&req)?;
    // Who asks comes next: an unauthenticated caller learns nothing, not even about its input.
    let caller = authenticate(&req, &state)?;
    let flow_id = FlowId::parse(raw).map_err(ApiError::InvalidFlowId)?;
    let timeout = caller_timeout(&req, state.request_timeout)?;
    let wait = requested_wait(&req, waits.max_wait())?;
    let trace_id = req
        .extensions()
        .get::<RequestId>()
        .map(|id| Arc::clone(&id.0));
    let asked_at = lookup.clock().now();
    let deadline = asked_at + timeout;
    // A long poll may wait for budget as long as its own wait; anyone at least the queue wait.
    let budget_wait = wait.map_or(state.max_queue_wait, |wait| {
        wait.duration.max(state.max_queue_wait)
    });
    let context = LookupContext {
        asked_at,
        deadline,
        budget_wait_until: (asked_at + budget_wait).min(deadline),
        wanted_for: Duration::ZERO,
        trace_id,
        caller,
        kept_call_time: None,
    };
    let mut found = lookup.lookup(&client, flow_id, &context).await?;
    if let Some(wait) = wait {
        // The whole long poll lasts its wait, the first lookup's budget wait included.
        let waited = lookup.clock().now().saturating_duration_since(asked_at);
        found = waits
            .into_inner()
            .wait(
                &client,
                flow_id,
                found,
                wait.duration.saturating_sub(waited),
                context.caller,
            )
            .await;
    }
    let mut response = render(&state, found, lookup.clock().now());
    if let Some(Wait {
        from_prefer: true,
        duration,
    }) = wait
    {
        response.headers_mut().insert(
            header::HeaderName::from_static("preference-applied"),
            header::HeaderValue::from_str(&format!("wait={}", duration.as_secs()))
                .expect("digits are a valid header value"),
        );
    }
    Ok(response)
}

/// A task or a remembered not-found, with headers that say how it was served and for how long
/// it may be reused.
fn render(state: &AppState, found: Lookup, now: Instant) -> HttpResponse {
    let answer = &found.answer;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    // Static and pre-built header values: a cache hit copies no header bytes.
    response.insert_header((
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(answer.content_type),
    ));
    match (answer.kind, found.served) {
        // The last known status past its interval: true for now, not to be reused.
        (_, Served::Stale | Served::Revalidating) => response.insert_header((
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("max-age=0"),
        )),
        (AnswerKind::Final, _) => {
            response.insert_header((header::CACHE_CONTROL, state.final_cache_control.clone()))
        }
        (AnswerKind::Processing | AnswerKind::NotFound, _) => response.insert_header((
            header::CACHE_CONTROL,
            format!("max-age={}", ceil_secs(answer.remaining(now))),
        )),
    };
    // Kept for clients that already read it (RFC 9111 made `Warning` obsolete): only when the
    // refresh failed, not while it merely waits for its turn.
    if found.served == Served::Stale {
        response.insert_header((header::WARNING, "111 - \"Revalidation Failed\""));
    }
    // For the access line and the request's span only: a response's extensions cost a hit an
    // allocation, so they are left empty when neither is written.
    if let Some(id) = answer
        .upstream_request_id
        .as_ref()
        .filter(|_| state.access_log || state.traces.is_on())
    {
        response
            .extensions_mut()
            .insert(UpstreamRequestId(Arc::clone(id)));
    }
    response
        .insert_header((header::AGE, answer.age_secs(now)))
        .insert_header((
            header::HeaderName::from_static("x-cache"),
            header::HeaderValue::from_static(found.served.x_cache()),
        ));
    // A hit on a final answer was rendered for this request alone: its body moves into the
    // response (cloning a fresh `Bytes` would allocate to share it).
    let body = match std::sync::Arc::try_unwrap(found.answer) {
        Ok(answer) => answer.body,
        Err(shared) => shared.body.clone(),
    };
    response.body(body)
}

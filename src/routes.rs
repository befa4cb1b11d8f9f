//! Thin HTTP handlers: parse, call the lookup, render. No business logic lives here.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use tokio::time::Instant;

use crate::cache::AnswerKind;
use crate::callers::{bearer_token, CallerName};
use crate::error::ApiError;
use crate::lookup::{Lookup, LookupContext, LookupService};
use crate::metrics::{Served, REJECTED_CALLER};
use crate::observe::{CallerLabel, RequestId, UpstreamRequestId};
use crate::state::AppState;
use crate::task::FlowId;
use crate::upstream::UpstreamClient;
use crate::waits::WaitService;

/// `Allow` of the task route.
pub const TASK_METHODS: &str = "GET, HEAD";
/// `Allow` of the operational routes.
pub const OPS_METHODS: &str = "GET, HEAD";

/// Registers every route; shared by the server and the tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        // A static prefix, not a `{flow_id}` pattern: actix matches patterns with a regex engine,
        // which cost a cache hit about a sixth of its CPU time. The whole tail reaches the parser,
        // so `/tasks/1/2` and `/tasks/` get a 400 that explains the flow id, not a bare 404.
        web::scope("/tasks").default_service(web::to(get_task)),
    )
    .service(ops_resource("/healthz", healthz))
    .service(ops_resource("/readyz", readyz))
    .service(ops_resource("/metrics", metrics));
}

fn ops_resource<F, R>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<(web::Data<AppState>,), Output = R>,
    R: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|| async {
            ApiError::MethodNotAllowed { allow: OPS_METHODS }
        }))
}

/// Answers every path that matches no route.
pub async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// The deadline a caller asks for with `X-Request-Timeout` (`2s`, `500ms` or plain seconds),
/// which may only shorten the configured one.
fn caller_timeout(req: &HttpRequest, configured: Duration) -> Result<Duration, ApiError> {
    let Some(value) = req.headers().get("x-request-timeout") else {
        return Ok(configured);
    };
    let asked = value
        .to_str()
        .ok()
        .and_then(parse_timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ApiError::InvalidRequest(
                "X-Request-Timeout must be a positive whole number of ms, s or m, such as 2s, \
                 500ms or 3 (seconds)"
                    .into(),
            )
        })?;
    Ok(asked.min(configured))
}

/// `<digits>[ms|s|m]`, seconds when the unit is left out. Deliberately narrow: it is an API.
fn parse_timeout(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let significant = text[..digits].trim_start_matches('0').len();
    if digits == 0 || significant > 9 {
        return None;
    }
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(number)),
        "ms" => Some(Duration::from_millis(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        _ => None,
    }
}

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
async fn get_task(
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
    let context = LookupContext {
        deadline: lookup.clock().now() + timeout,
        trace_id,
        caller,
    };
    let mut found = lookup.lookup(&client, flow_id, &context).await?;
    if let Some(wait) = wait {
        found = waits
            .into_inner()
            .wait(&client, flow_id, found, wait.duration, context.caller)
            .await;
    }
    let mut response = render(&state, &found, lookup.clock().now());
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

/// A long poll the caller asked for, capped to `TASKGATE_MAX_WAIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wait {
    duration: Duration,
    /// Asked with `Prefer: wait=N` (answered with `Preference-Applied`).
    from_prefer: bool,
}

/// `?wait=30s` (the X-Request-Timeout grammar) or `Prefer: wait=30` (RFC 7240, seconds).
fn requested_wait(req: &HttpRequest, max_wait: Duration) -> Result<Option<Wait>, ApiError> {
    let from_query = req
        .query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait="));
    if let Some(text) = from_query {
        let duration = parse_timeout(text).ok_or_else(|| {
            ApiError::InvalidRequest(
                "wait must be a whole number of ms, s or m, such as 30s (seconds when the unit \
                 is left out)"
                    .into(),
            )
        })?;
        return Ok(Some(Wait {
            duration: duration.min(max_wait),
            from_prefer: false,
        }));
    }
    let preferences = req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(str::trim);
    for preference in preferences {
        let Some((name, value)) = preference.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("wait") {
            continue;
        }
        // RFC 7240: a preference the server cannot understand is ignored, not an error.
        if let Ok(seconds) = value.trim().trim_matches('"').parse::<u32>() {
            return Ok(Some(Wait {
                duration: Duration::from_secs(u64::from(seconds)).min(max_wait),
                from_prefer: true,
            }));
        }
    }
    Ok(None)
}

/// The caller named by the bearer token, when caller authentication is on. Records the name
/// (never the token) for the access log and the metrics.
fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Option<CallerName>, ApiError> {
    let Some(registry) = &state.callers else {
        req.extensions_mut()
            .insert(CallerLabel(Arc::clone(&state.anonymous)));
        return Ok(None);
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented.and_then(|token| registry.current().identify(token)) {
        Some(name) => {
            req.extensions_mut().insert(CallerLabel(Arc::clone(&name)));
            Ok(Some(name))
        }
        None => {
            req.extensions_mut()
                .insert(CallerLabel(Arc::from(REJECTED_CALLER)));
            Err(ApiError::Unauthorized {
                token_presented: presented.is_some(),
            })
        }
    }
}

/// Whole seconds, rounded up: a processing answer with 0.4 s left is worth a `max-age=1`.
fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A task or a remembered not-found, with headers that say how it was served and for how long
/// it may be reused.
fn render(state: &AppState, found: &Lookup, now: Instant) -> HttpResponse {
    let answer = &found.answer;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    // Static and pre-built header values: a cache hit copies no header bytes.
    response.insert_header((
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(answer.content_type),
    ));
    match answer.kind {
        AnswerKind::Final => {
            response.insert_header((header::CACHE_CONTROL, state.final_cache_control.clone()))
        }
        AnswerKind::Processing | AnswerKind::NotFound => response.insert_header((
            header::CACHE_CONTROL,
            format!("max-age={}", ceil_secs(answer.remaining(now))),
        )),
    };
    if found.served == Served::Stale {
        response.insert_header((header::WARNING, "111 - \"Revalidation Failed\""));
    }
    if let Some(id) = &answer.upstream_request_id {
        response
            .extensions_mut()
            .insert(UpstreamRequestId(Arc::clone(id)));
    }
    response
        .insert_header((header::AGE, answer.age_secs(now)))
        .insert_header((
            header::HeaderName::from_static("x-cache"),
            header::HeaderValue::from_static(found.served.as_str()),
        ))
        .body(answer.body.clone())
}

async fn healthz(_state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.readiness() {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({"status": "ready"})),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({"status": "not_ready", "reason": reason})),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.refresh_gauges().await;
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_the_documented_grammar_only() {
        assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("000000002s"), Some(Duration::from_secs(2)));
        for bad in ["", "s", "1.5s", "-1s", "1h", "1 s", "1234567890s", "2sec"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }
}

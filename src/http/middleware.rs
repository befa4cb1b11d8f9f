//! The middleware around every request: request id, trace span, access log line, HTTP metrics.
//!
//! `X-Request-Id` is taken from the caller when it is sane (1-128 characters of letters, digits,
//! `-`, `_`, `.`, `:`), generated otherwise; it is returned on the response, sent upstream as
//! `X-TC-TraceId`, and written in the access log, so one request can be followed end to end.
//! When traces are on, the request runs inside its span (`request_span`), a child of the
//! caller's W3C `traceparent`, and the access line carries its trace id; off, none of it runs.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::ResponseError;
use actix_web::{web, HttpMessage};

use super::request_span;
use super::state::AppState;
use crate::error::{ApiError, MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_URI_LENGTH};
use crate::telemetry::access::{self, AccessRecord};
use crate::telemetry::traces::TraceSpan;
use crate::telemetry::{CallerLabel, RequestId, Route, UpstreamRequestId};

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

fn is_sane(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A fresh id: 128 random bits in lowercase hex (written digit by digit: `format!` costs a hit
/// about as much as its moka lookup).
fn generate_request_id() -> Arc<str> {
    hex_id(fastrand::u128(..))
}

fn hex_id(bits: u128) -> Arc<str> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = DIGITS[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    Arc::from(std::str::from_utf8(&id).expect("hex digits are ASCII"))
}

pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let started = Instant::now();
    // An overlong target is refused before anything reads it.
    let target_length = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let refusal = if target_length > MAX_URI_LENGTH {
        Some(ApiError::UriTooLong)
    } else if req.headers().len() > MAX_HEADER_COUNT || header_bytes > MAX_HEADER_BYTES {
        Some(ApiError::HeadersTooLarge)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        let response = refusal.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let route = Route::of_path(req.path());
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_sane(id))
        .map_or_else(generate_request_id, Arc::from);
    req.extensions_mut()
        .insert(RequestId(Arc::clone(&request_id)));
    let method = req.method().clone();
    let span = match &state {
        Some(state) if state.traces.is_on() => {
            request_span::start(&state.traces, &req, route, &request_id)
        }
        _ => TraceSpan::none(),
    };

    let mut response = span.wrap(next.call(req)).await?.map_into_left_body();

    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    if let Some(state) = state {
        state
            .metrics
            .record_http(route, status, elapsed.as_secs_f64());
        let caller = response
            .request()
            .extensions()
            .get::<CallerLabel>()
            .cloned();
        if let Some(caller) = &caller {
            state.metrics.record_caller(&caller.0);
        }
        let upstream_request_id = || {
            response
                .response()
                .extensions()
                .get::<UpstreamRequestId>()
                .map(|id| Arc::clone(&id.0))
        };
        if span.is_recording() {
            let caller = caller.as_ref().map(|c| &c.0);
            request_span::finish(&span, &response, caller, upstream_request_id());
        }
        if state.access_log {
            let served = response
                .headers()
                .get(X_CACHE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let upstream_request_id = upstream_request_id();
            access::access(&AccessRecord {
                method: method.as_str(),
                route: route.template(),
                status,
                duration: elapsed,
                served,
                upstream_request_id: upstream_request_id.as_deref(),
                caller: caller.as_ref().map(|c| &*c.0),
                request_id: &request_id,
                trace_id: span.trace_id(),
            });
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_kept() {
        assert!(is_sane("abc-123_X.y:z"));
        assert!(!is_sane(""));
        assert!(!is_sane("has space"));
        assert!(!is_sane("new\nline"));
        assert!(!is_sane(&"a".repeat(129)));
        assert_eq!(generate_request_id().len(), 32);
    }

    #[test]
    fn generated_ids_are_the_bits_in_lowercase_hex() {
        for bits in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            assert_eq!(&*hex_id(bits), format!("{bits:032x}"));
        }
    }
}

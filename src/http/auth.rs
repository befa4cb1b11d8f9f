//! Who asks: the caller named by the request's bearer token, when caller authentication is on.
//! The caller's name (never the token) is recorded for the access log and the metrics.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest};

use super::callers::bearer_token;
use super::state::AppState;
use crate::error::ApiError;
use crate::task::CallerName;
use crate::telemetry::{CallerLabel, REJECTED_CALLER};

/// The caller named by the bearer token, when caller authentication is on. Records the name
/// (never the token) for the access log and the metrics.
pub(super) fn authenticate(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<CallerName>, ApiError> {
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
    match presented.and_then(|token| registry.load().identify(token)) {
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

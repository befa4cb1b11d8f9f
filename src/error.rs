//! `ApiError`: everything a caller can be told went wrong, and its one mapping to HTTP.
//!
//! Every error leaves as `application/problem+json` (RFC 9457) with `type`, `title`, `status`,
//! `detail`, and `code` / `request_id` when the upstream gave them. Each variant knows its side:
//! the caller's (4xx), the upstream's (502/503/504) or ours (500). This file is the only place that
//! decides status codes.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::task::FlowIdError;
use crate::telemetry::UpstreamRequestId;
use crate::upstream::{ErrorFamily, UpstreamError};

pub(crate) const PROBLEM_JSON: &str = "application/problem+json";
/// Longest request target (path and query) taskgate reads.
pub(crate) const MAX_URI_LENGTH: usize = 2048;
/// Most request headers taskgate reads (the HTTP layer refuses more than 96 on its own).
pub(crate) const MAX_HEADER_COUNT: usize = 64;
/// Most bytes of request header names and values taskgate reads.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The path segment is not a flow id. Caller's side; no upstream call was made.
    InvalidFlowId(FlowIdError),
    /// A header or parameter the caller sent is not acceptable.
    InvalidRequest(String),
    /// No such route.
    RouteNotFound,
    /// Caller authentication is on and the request has no valid bearer token.
    Unauthorized { token_presented: bool },
    /// The request target is longer than taskgate accepts.
    UriTooLong,
    /// The request's headers are larger or more numerous than taskgate accepts.
    HeadersTooLarge,
    /// The route exists but not for this method.
    MethodNotAllowed { allow: &'static str },
    /// The upstream failed or refused; carries what it said.
    Upstream(UpstreamError),
    /// Tencent kept throttling this lookup's calls (`RequestLimitExceeded`) through its bounded
    /// retries; `Retry-After` follows the back-off in force.
    Throttled {
        error: UpstreamError,
        retry_after_secs: u64,
    },
    /// Our own limiter has no budget for this lookup within its wait bound.
    BudgetExhausted { retry_after_secs: u64 },
    /// The caller's deadline passed while the lookup was still under way.
    DeadlineExceeded,
    /// The circuit breaker is open: the upstream kept failing, so we do not queue behind it.
    CircuitOpen { retry_after_secs: u64 },
    /// A bug or an impossible state on our side.
    Internal(String),
    /// An error another replica answered for the lookup this one waited on, as it rendered it.
    Relayed {
        status: u16,
        body: bytes::Bytes,
        retry_after_secs: Option<u64>,
        upstream_request_id: Option<String>,
    },
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The parts of a problem answer, computed once per error.
struct ProblemParts<'a> {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    code: Option<&'a str>,
}

impl ApiError {
    fn parts(&self) -> ProblemParts<'_> {
        let part = |status, slug, title, detail: String| ProblemParts {
            status,
            slug,
            title,
            detail,
            code: None,
        };
        match self {
            Self::InvalidFlowId(e) => part(
                StatusCode::BAD_REQUEST,
                "invalid-flow-id",
                "Invalid flow id",
                e.to_string(),
            ),
            Self::InvalidRequest(detail) => part(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
                detail.clone(),
            ),
            Self::Unauthorized { token_presented } => part(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                if *token_presented {
                    "the bearer token is not valid for taskgate".into()
                } else {
                    "send `Authorization: Bearer <token>` with the token issued to your service"
                        .into()
                },
            ),
            Self::UriTooLong => part(
                StatusCode::URI_TOO_LONG,
                "uri-too-long",
                "URI too long",
                format!("request targets are limited to {MAX_URI_LENGTH} bytes"),
            ),
            Self::HeadersTooLarge => part(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request headers too large",
                format!(
                    "requests may carry at most {MAX_HEADER_COUNT} headers and \
                     {MAX_HEADER_BYTES} bytes of them"
                ),
            ),
            Self::RouteNotFound => part(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no such endpoint; see GET /tasks/{flow_id}".into(),
            ),
            Self::MethodNotAllowed { allow } => part(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("this endpoint answers {allow} only"),
            ),
            Self::BudgetExhausted { retry_after_secs } => part(
                StatusCode::SERVICE_UNAVAILABLE,
                "budget-exhausted",
                "Upstream budget exhausted",
                format!(
                    "the upstream allows a fixed number of calls per second and the queue for them \
                     is full or too slow; retry in {retry_after_secs} s"
                ),
            ),
            Self::CircuitOpen { retry_after_secs } => part(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-circuit-open",
                "Upstream unavailable",
                format!(
                    "the upstream failed repeatedly; taskgate stops calling it for a moment \
                     (retry in {retry_after_secs} s)"
                ),
            ),
            Self::DeadlineExceeded => part(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline-exceeded",
                "Lookup deadline exceeded",
                "the lookup did not complete within the request deadline".into(),
            ),
            Self::Internal(detail) => part(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                detail.clone(),
            ),
            Self::Upstream(error) | Self::Throttled { error, .. } => upstream_parts(error),
            Self::Relayed { status, .. } => part(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                "relayed",
                "Relayed error",
                String::new(),
            ),
        }
    }

    /// The problem type's last segment (`budget-exhausted`, `deadline-exceeded`...): a short,
    /// bounded name of the error, for spans.
    pub(crate) fn slug(&self) -> &'static str {
        self.parts().slug
    }

    /// Seconds a client should wait before retrying, when the answer is 503.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::BudgetExhausted { retry_after_secs }
            | Self::CircuitOpen { retry_after_secs }
            | Self::Throttled {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            Self::Relayed {
                retry_after_secs, ..
            } => *retry_after_secs,
            Self::Upstream(e) if e.is_throttled() => Some(1),
            _ => None,
        }
    }

    /// The upstream RequestId, for the access log and the problem body.
    pub fn upstream_request_id(&self) -> Option<&str> {
        match self {
            Self::Upstream(e) | Self::Throttled { error: e, .. } => e.request_id(),
            Self::Relayed {
                upstream_request_id,
                ..
            } => upstream_request_id.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().status
    }

    /// The problem+json body.
    pub fn to_body(&self) -> Vec<u8> {
        if let Self::Relayed { body, .. } = self {
            return body.to_vec();
        }
        let parts = self.parts();
        serde_json::to_vec(&Problem {
            kind: format!("urn:taskgate:problem:{}", parts.slug),
            title: parts.title,
            status: parts.status.as_u16(),
            detail: parts.detail,
            code: parts.code,
            request_id: self.upstream_request_id(),
        })
        .expect("a problem of strings and integers always serializes")
    }
}

fn upstream_parts(error: &UpstreamError) -> ProblemParts<'_> {
    let (status, slug, title, detail) = match error {
        UpstreamError::Api(answer) => match ErrorFamily::of(&answer.code) {
            ErrorFamily::NotFound => (
                StatusCode::NOT_FOUND,
                "task-not-found",
                "Task not found",
                with_message(
                    "the upstream knows no task with this flow id",
                    &answer.message,
                ),
            ),
            ErrorFamily::InvalidRequest => (
                StatusCode::BAD_REQUEST,
                "upstream-rejected-request",
                "Request rejected by the upstream",
                with_message("the upstream rejected the lookup", &answer.message),
            ),
            ErrorFamily::Throttled => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-throttled",
                "Upstream rate limit exceeded",
                "Tencent Cloud throttled the account's calls; retry shortly".to_string(),
            ),
            // Our credentials, permissions or clock: never the caller's fault, and Tencent's
            // message is not repeated (it may describe the key).
            ErrorFamily::Auth => (
                StatusCode::BAD_GATEWAY,
                "upstream-auth-failure",
                "Gateway credentials rejected",
                "the upstream rejected taskgate's own credentials or clock; this is not the \
                 caller's fault and operators are alerted"
                    .to_string(),
            ),
            ErrorFamily::Permission => (
                StatusCode::BAD_GATEWAY,
                "upstream-permission-denied",
                "Gateway not permitted",
                "taskgate's credentials lack permission for this lookup; this is not the \
                 caller's fault and operators are alerted"
                    .to_string(),
            ),
            ErrorFamily::Unavailable | ErrorFamily::Other => (
                StatusCode::BAD_GATEWAY,
                "upstream-error",
                "Upstream error",
                with_message("the upstream failed to answer", &answer.message),
            ),
        },
        UpstreamError::HttpStatus { status } => (
            StatusCode::BAD_GATEWAY,
            "upstream-bad-status",
            "Upstream error",
            format!("the upstream answered HTTP {status}"),
        ),
        UpstreamError::Malformed { reason, .. } => (
            StatusCode::BAD_GATEWAY,
            "upstream-malformed-answer",
            "Malformed upstream answer",
            format!("the upstream's answer could not be used: {reason}"),
        ),
        UpstreamError::Transport { .. } => (
            StatusCode::BAD_GATEWAY,
            "upstream-unreachable",
            "Upstream unreachable",
            "the connection to the upstream failed".to_string(),
        ),
        // The caller's view stays "unreachable"; the reason is in the log and the `tls` outcome.
        UpstreamError::Tls { .. } => (
            StatusCode::BAD_GATEWAY,
            "upstream-unreachable",
            "Upstream unreachable",
            "the TLS handshake with the upstream failed (its certificate is not trusted here); \
             this is not the caller's fault and operators are alerted"
                .to_string(),
        ),
        UpstreamError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            "Upstream timeout",
            "the upstream did not answer in time".to_string(),
        ),
    };
    ProblemParts {
        status,
        slug,
        title,
        detail,
        code: match error {
            UpstreamError::Api(answer) => Some(answer.code.as_str()),
            _ => None,
        },
    }
}

fn with_message(summary: &str, message: &str) -> String {
    if message.is_empty() {
        summary.to_string()
    } else {
        format!("{summary}: {message}")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = self.parts();
        write!(f, "{} ({}): {}", parts.title, parts.status, parts.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        response.insert_header((header::CONTENT_TYPE, PROBLEM_JSON));
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(secs) = self.retry_after_secs() {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Self::Unauthorized { token_presented } = self {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                if *token_presented {
                    r#"Bearer realm="taskgate", error="invalid_token""#
                } else {
                    r#"Bearer realm="taskgate""#
                },
            ));
        }
        if let Self::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, *allow));
        }
        if let Some(id) = self.upstream_request_id() {
            response
                .extensions_mut()
                .insert(UpstreamRequestId(std::sync::Arc::from(id)));
        }
        response.body(self.to_body())
    }
}

/// Lets handlers that can only fail (404, 405) return the error itself.
impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _req: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ApiErrorAnswer;

    fn api(code: &str) -> ApiError {
        ApiError::Upstream(UpstreamError::Api(ApiErrorAnswer {
            code: code.into(),
            message: "msg".into(),
            request_id: Some("rid".into()),
            server_date: None,
        }))
    }

    #[test]
    fn maps_every_family_to_its_status() {
        for (code, status) in [
            ("ResourceNotFound", 404),
            ("InvalidParameterValue", 400),
            ("MissingParameter", 400),
            ("UnknownParameter", 400),
            ("RequestLimitExceeded", 503),
            ("AuthFailure.SignatureFailure", 502),
            ("UnauthorizedOperation", 502),
            ("OperationDenied", 502),
            ("InternalError", 502),
            ("ServiceUnavailable", 502),
            ("ResourceUnavailable", 502),
            ("FailedOperation", 502),
            ("SomethingNew", 502),
        ] {
            assert_eq!(api(code).status().as_u16(), status, "{code}");
        }
        assert_eq!(
            ApiError::Upstream(UpstreamError::Timeout).status().as_u16(),
            504
        );
    }

    #[test]
    fn problem_body_carries_code_and_request_id() {
        let body: serde_json::Value =
            serde_json::from_slice(&api("ResourceNotFound").to_body()).unwrap();
        assert_eq!(body["status"], 404);
        assert_eq!(body["code"], "ResourceNotFound");
        assert_eq!(body["request_id"], "rid");
        assert_eq!(body["type"], "urn:taskgate:problem:task-not-found");
        let body: serde_json::Value =
            serde_json::from_slice(&ApiError::RouteNotFound.to_body()).unwrap();
        assert!(body.get("code").is_none());
    }
}

//! Reading an upstream answer: a task, or an error that says which side it came from.
//!
//! Tencent reports errors with HTTP 200 and `Response.Error`, so the body is read first, whatever
//! the status line and Content-Type say. Anything that is not a well-formed success (a non-200
//! status, a body that is not JSON, a missing or unknown `TaskStatus`) is an upstream fault: never
//! a success, never cached.

use serde_json::Value;

use crate::task::{FlowId, Task, TaskStatus};

/// An error answer from Tencent (`Response.Error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErrorAnswer {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    /// The answer's `Date` header, when it had one: how a clock problem is measured.
    pub server_date: Option<std::time::SystemTime>,
}

/// How an upstream error code is treated, by its documented prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFamily {
    /// `ResourceNotFound*`: no such task.
    NotFound,
    /// `InvalidParameter*`, `MissingParameter`, `UnknownParameter`: the request was rejected.
    InvalidRequest,
    /// `RequestLimitExceeded*`: throttled; back off.
    Throttled,
    /// `AuthFailure*`: our credentials or clock are wrong.
    Auth,
    /// `UnauthorizedOperation*`, `OperationDenied*`: the key lacks permission.
    Permission,
    /// `InternalError`, `ServiceUnavailable`, `ResourceUnavailable*`, `FailedOperation*`.
    Unavailable,
    /// Any other code.
    Other,
}

impl ErrorFamily {
    pub fn of(code: &str) -> Self {
        let starts = |prefix: &str| {
            code == prefix
                || code
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        if starts("ResourceNotFound") {
            Self::NotFound
        } else if starts("InvalidParameter")
            || starts("InvalidParameterValue")
            || starts("MissingParameter")
            || starts("UnknownParameter")
        {
            Self::InvalidRequest
        } else if starts("RequestLimitExceeded") {
            Self::Throttled
        } else if starts("AuthFailure") {
            Self::Auth
        } else if starts("UnauthorizedOperation") || starts("OperationDenied") {
            Self::Permission
        } else if starts("InternalError")
            || starts("ServiceUnavailable")
            || starts("ResourceUnavailable")
            || starts("FailedOperation")
        {
            Self::Unavailable
        } else {
            Self::Other
        }
    }
}

/// Everything that can go wrong with one upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// Tencent answered with an error code.
    Api(ApiErrorAnswer),
    /// A non-200 status line without a readable Tencent error.
    HttpStatus { status: u16 },
    /// An answer we cannot trust: not JSON, missing fields, unknown status, too large.
    Malformed {
        reason: String,
        request_id: Option<String>,
    },
    /// Connecting or the connection failed (refused, reset, closed early).
    Transport { reason: String },
    /// The TLS handshake was refused: the upstream's certificate is not trusted or not valid for
    /// its host, or no protocol could be agreed. Retrying cannot change that, so it never is.
    Tls { reason: String },
    /// The attempt did not finish within `TASKGATE_UPSTREAM_TIMEOUT`.
    Timeout,
}

impl UpstreamError {
    pub fn family(&self) -> Option<ErrorFamily> {
        match self {
            Self::Api(answer) => Some(ErrorFamily::of(&answer.code)),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Api(answer) => answer.request_id.as_deref(),
            Self::Malformed { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// A failure that says nothing about the task and may pass: a connection that failed, an
    /// attempt that timed out, a 5xx, or Tencent's `InternalError` / `ServiceUnavailable`.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout => true,
            Self::HttpStatus { status } => *status >= 500,
            Self::Api(answer) => {
                let code = answer.code.as_str();
                code == "InternalError"
                    || code.starts_with("InternalError.")
                    || code == "ServiceUnavailable"
                    || code.starts_with("ServiceUnavailable.")
            }
            Self::Malformed { .. } | Self::Tls { .. } => false,
        }
    }

    /// Throttling says the account's budget is spent: worth a retry after a back-off.
    pub fn is_throttled(&self) -> bool {
        self.family() == Some(ErrorFamily::Throttled)
    }
}

fn malformed(reason: &str, request_id: Option<String>) -> UpstreamError {
    UpstreamError::Malformed {
        reason: reason.to_string(),
        request_id,
    }
}

/// Reads one answer. `status` is the HTTP status code, `body` at most `MAX_ANSWER_BYTES`.
pub fn parse_answer(flow_id: FlowId, status: u16, body: &[u8]) -> Result<Task, UpstreamError> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let response = parsed.as_ref().and_then(|v| v.get("Response"));
    let request_id = response
        .and_then(|r| r.get("RequestId"))
        .and_then(Value::as_str)
        .map(str::to_owned);

    if let Some(error) = response.and_then(|r| r.get("Error")) {
        let code = error.get("Code").and_then(Value::as_str);
        return match code {
            Some(code) if !code.is_empty() => Err(UpstreamError::Api(ApiErrorAnswer {
                code: code.to_string(),
                message: error
                    .get("Message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                request_id,
                server_date: None,
            })),
            _ => Err(malformed("Response.Error has no Code", request_id)),
        };
    }
    if status != 200 {
        return Err(UpstreamError::HttpStatus { status });
    }
    let Some(parsed) = parsed else {
        return Err(malformed("the answer is not JSON", None));
    };
    let Some(response) = parsed.get("Response").filter(|r| r.is_object()) else {
        return Err(malformed("the answer has no Response object", None));
    };
    let task_status = match response.get("TaskStatus") {
        None | Some(Value::Null) => {
            return Err(malformed("Response.TaskStatus is missing", request_id))
        }
        Some(value) => value
            .as_i64()
            .and_then(TaskStatus::from_code)
            .ok_or_else(|| malformed("Response.TaskStatus is not 0, 1 or 2", request_id.clone()))?,
    };
    let description = match response.get("Description") {
        Some(Value::String(text)) => text.clone(),
        None | Some(Value::Null) => {
            return Err(malformed("Response.Description is missing", request_id))
        }
        Some(_) => {
            return Err(malformed(
                "Response.Description is not a string",
                request_id,
            ))
        }
    };
    let Some(request_id) = request_id else {
        return Err(malformed("Response.RequestId is missing", None));
    };
    Ok(Task {
        flow_id,
        status: task_status,
        description,
        request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> FlowId {
        FlowId::new(7).unwrap()
    }

    #[test]
    fn reads_a_success() {
        let body = br#"{"Response":{"TaskStatus":1,"Description":"done","RequestId":"r-1"}}"#;
        let task = parse_answer(id(), 200, body).unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
        assert_eq!(task.description, "done");
        assert_eq!(task.request_id, "r-1");
    }

    #[test]
    fn reads_errors_whatever_the_status_line() {
        let body = br#"{"Response":{"Error":{"Code":"ResourceNotFound","Message":"no"},"RequestId":"r-2"}}"#;
        for status in [200, 400, 500] {
            let err = parse_answer(id(), status, body).unwrap_err();
            assert_eq!(err.family(), Some(ErrorFamily::NotFound));
            assert_eq!(err.request_id(), Some("r-2"));
        }
    }

    #[test]
    fn rejects_what_is_not_a_clean_success() {
        let cases: [(u16, &[u8]); 7] = [
            (200, br#"{"Response":{"TaskStatus":1,"RequestId":"r"}}"#),
            (500, b"oops"),
            (200, b"<html>"),
            (200, br#"{"Response":{"RequestId":"r"}}"#),
            (200, br#"{"Response":{"TaskStatus":3,"RequestId":"r"}}"#),
            (200, br#"{"Response":{"TaskStatus":"1","RequestId":"r"}}"#),
            (200, br#"{"Response":{"TaskStatus":1}}"#),
        ];
        for (status, body) in cases {
            assert!(
                parse_answer(id(), status, body).is_err(),
                "{status} {body:?}"
            );
        }
        assert_eq!(
            parse_answer(id(), 503, b"{}").unwrap_err(),
            UpstreamError::HttpStatus { status: 503 }
        );
    }

    #[test]
    fn families_follow_the_documented_prefixes() {
        use ErrorFamily::*;
        for (code, family) in [
            ("ResourceNotFound", NotFound),
            ("ResourceNotFound.TaskNotExist", NotFound),
            ("InvalidParameter", InvalidRequest),
            ("InvalidParameterValue.FlowID", InvalidRequest),
            ("MissingParameter", InvalidRequest),
            ("UnknownParameter", InvalidRequest),
            ("RequestLimitExceeded", Throttled),
            ("RequestLimitExceeded.UinLimitExceeded", Throttled),
            ("AuthFailure.SignatureFailure", Auth),
            ("UnauthorizedOperation", Permission),
            ("OperationDenied.Forbidden", Permission),
            ("InternalError", Unavailable),
            ("ServiceUnavailable", Unavailable),
            ("ResourceUnavailable.NotPurchased", Unavailable),
            ("FailedOperation", Unavailable),
            ("ResourceNotFoundish", Other),
            ("LimitExceeded", Other),
        ] {
            assert_eq!(ErrorFamily::of(code), family, "{code}");
        }
    }
}

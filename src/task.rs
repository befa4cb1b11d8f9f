//! The domain: a flow id as callers write it, the status of its task, the task we answer with,
//! and the name of the service that asks. Imports nothing of the crate.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A calling service's name, as caller authentication knows it: it picks the caller's queue for
/// its fair share of the budget and labels its requests (never a token).
pub(crate) type CallerName = Arc<str>;

/// A validated SSM `FlowID`: a decimal integer from 0 to 2^63-1, written with digits only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(i64);

/// Why a path segment is not a flow id. The text is shown to callers as the problem `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowIdError {
    Empty,
    NotDecimal,
    TooLarge,
}

impl fmt::Display for FlowIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "flow_id is empty",
            Self::NotDecimal => "flow_id must be written with the digits 0-9 only (no sign, spaces, exponent or hex)",
            Self::TooLarge => "flow_id must be at most 9223372036854775807",
        })
    }
}

impl FlowId {
    /// Parses the path segment exactly: `str::parse::<i64>` would accept a leading `+` or `-`.
    pub fn parse(text: &str) -> Result<Self, FlowIdError> {
        if text.is_empty() {
            return Err(FlowIdError::Empty);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FlowIdError::NotDecimal);
        }
        let mut value: i64 = 0;
        for digit in text.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(digit - b'0')))
                .ok_or(FlowIdError::TooLarge)?;
        }
        Ok(Self(value))
    }

    /// Builds a flow id from a number already known to be valid (tests, the demo).
    pub fn new(value: i64) -> Option<Self> {
        (value >= 0).then_some(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `TaskStatus` as SSM reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Processing,
    Succeeded,
    Failed,
}

impl TaskStatus {
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Processing),
            1 => Some(Self::Succeeded),
            2 => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Processing => 0,
            Self::Succeeded => 1,
            Self::Failed => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Succeeded and failed tasks never change again, so they may be kept for long.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Processing)
    }
}

/// What a caller receives for a known task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub flow_id: FlowId,
    pub status: TaskStatus,
    pub description: String,
    pub request_id: String,
}

#[derive(Serialize)]
struct TaskBody<'a> {
    flow_id: i64,
    status: &'static str,
    task_status: u8,
    description: &'a str,
    request_id: &'a str,
}

impl Task {
    /// The JSON body callers get; rendered once and cached as bytes, so a cache hit does no work.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&TaskBody {
            flow_id: self.flow_id.0,
            status: self.status.as_str(),
            task_status: self.status.code(),
            description: &self.description,
            request_id: &self.request_id,
        })
        .expect("a struct of strings and integers always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_range_and_nothing_else() {
        assert_eq!(FlowId::parse("0").unwrap().get(), 0);
        assert_eq!(FlowId::parse("42").unwrap().get(), 42);
        assert_eq!(FlowId::parse("007").unwrap().get(), 7);
        assert_eq!(
            FlowId::parse("9223372036854775807").unwrap().get(),
            i64::MAX
        );
        assert_eq!(
            FlowId::parse("9223372036854775808"),
            Err(FlowIdError::TooLarge)
        );
        assert_eq!(
            FlowId::parse("99999999999999999999999"),
            Err(FlowIdError::TooLarge)
        );
        for bad in [
            "-1", "+1", " 1", "1 ", "1e3", "0x10", "1.0", "١", "abc", "1/2",
        ] {
            assert_eq!(FlowId::parse(bad), Err(FlowIdError::NotDecimal), "{bad}");
        }
        assert_eq!(FlowId::parse(""), Err(FlowIdError::Empty));
    }

    #[test]
    fn renders_the_documented_body() {
        let task = Task {
            flow_id: FlowId::new(123).unwrap(),
            status: TaskStatus::Failed,
            description: "boom \"quoted\"".into(),
            request_id: "req-1".into(),
        };
        let value: serde_json::Value = serde_json::from_slice(&task.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"flow_id": 123, "status": "failed", "task_status": 2,
                "description": "boom \"quoted\"", "request_id": "req-1"})
        );
    }
}

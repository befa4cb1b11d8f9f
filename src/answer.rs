//! The answer taskgate gives for a task, as both the local cache and the shared (Redis) cache
//! hold it: the response body already rendered, its kind, and how long it may be served.
//!
//! A final answer also carries its facts ([`FinalFacts`]: flow id, status, description, the
//! upstream RequestId), which is all the caches keep of it: the local cache stores them in a
//! compact form and renders the body again on a hit ([`render_task_body`], byte for byte what
//! [`Task::to_json`] writes).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::{ApiError, PROBLEM_JSON};
use crate::task::{FlowId, Task, TaskStatus};

/// What kind of answer an entry is; decides its lifetime and its Cache-Control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    Final,
    Processing,
    NotFound,
}

/// Everything a final answer says, beside when it was fetched: its body is made of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalFacts {
    pub flow_id: FlowId,
    /// Succeeded or failed.
    pub status: TaskStatus,
    pub description: Arc<str>,
    pub request_id: Arc<str>,
}

/// A rendered answer, as served to every caller of one flow id until it expires.
#[derive(Debug)]
pub struct Answer {
    pub kind: AnswerKind,
    /// 200 for tasks, 404 for not found.
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    /// When the upstream's answer arrived.
    pub fetched_at: Instant,
    /// How long it may be served.
    pub ttl: Duration,
    /// How long after that it may still be served if its refresh fails (stale-if-error).
    pub stale_for: Duration,
    pub upstream_request_id: Option<Arc<str>>,
    /// A final answer's facts (what the caches keep of it); `None` for the other kinds.
    pub facts: Option<FinalFacts>,
}

impl Answer {
    pub fn from_task(task: &Task, fetched_at: Instant, ttl: Duration, stale_for: Duration) -> Self {
        let request_id: Arc<str> = Arc::from(task.request_id.as_str());
        let facts = task.status.is_final().then(|| FinalFacts {
            flow_id: task.flow_id,
            status: task.status,
            description: Arc::from(task.description.as_str()),
            request_id: Arc::clone(&request_id),
        });
        Self {
            kind: if facts.is_some() {
                AnswerKind::Final
            } else {
                AnswerKind::Processing
            },
            status: 200,
            content_type: "application/json",
            body: Bytes::from(task.to_json()),
            fetched_at,
            ttl,
            stale_for,
            upstream_request_id: Some(request_id),
            facts,
        }
    }

    /// A final answer rebuilt from its facts (from a cache), its body rendered again:
    /// `description_json` and `request_id_json` are those texts already written as JSON strings.
    pub fn from_facts(
        facts: FinalFacts,
        description_json: &str,
        request_id_json: &str,
        fetched_at: Instant,
        ttl: Duration,
    ) -> Self {
        let body = render_task_body(
            facts.flow_id,
            facts.status,
            description_json,
            request_id_json,
        );
        Self {
            kind: AnswerKind::Final,
            status: 200,
            content_type: "application/json",
            body: Bytes::from(body),
            fetched_at,
            ttl,
            stale_for: Duration::ZERO,
            upstream_request_id: Some(Arc::clone(&facts.request_id)),
            facts: Some(facts),
        }
    }

    pub fn not_found(error: &ApiError, fetched_at: Instant, ttl: Duration) -> Self {
        Self {
            kind: AnswerKind::NotFound,
            status: 404,
            content_type: PROBLEM_JSON,
            body: Bytes::from(error.to_body()),
            fetched_at,
            ttl,
            stale_for: Duration::ZERO,
            upstream_request_id: error.upstream_request_id().map(Arc::from),
            facts: None,
        }
    }

    /// Time left before the entry must be fetched again (zero when expired).
    pub fn remaining(&self, now: Instant) -> Duration {
        (self.fetched_at + self.ttl).saturating_duration_since(now)
    }

    /// Time left before the entry may no longer be served even as a stale fallback.
    pub fn usable(&self, now: Instant) -> Duration {
        (self.fetched_at + self.ttl + self.stale_for).saturating_duration_since(now)
    }

    /// Seconds since the call that fetched it was sent, for the `Age` header.
    pub fn age_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.fetched_at).as_secs()
    }
}

/// `text` as a JSON string literal, quotes included, escaped exactly as `serde_json` does.
pub(crate) fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

/// The body of a task's answer from its parts, the same bytes as [`Task::to_json`] (tested):
/// `description_json` and `request_id_json` are JSON string literals (see [`json_string`]).
pub(crate) fn render_task_body(
    flow_id: FlowId,
    status: TaskStatus,
    description_json: &str,
    request_id_json: &str,
) -> Vec<u8> {
    const FIXED: usize = b"{\"flow_id\":".len()
        + b",\"status\":\"".len()
        + b"\",\"task_status\":".len()
        + 1
        + b",\"description\":".len()
        + b",\"request_id\":".len()
        + 1;
    let mut digits = itoa::Buffer::new();
    let flow_id = digits.format(flow_id.get());
    let status_text = status.as_str();
    // Exactly the length: `Bytes::from` a full `Vec` takes it over without another allocation.
    let mut body = Vec::with_capacity(
        FIXED + flow_id.len() + status_text.len() + description_json.len() + request_id_json.len(),
    );
    body.extend_from_slice(b"{\"flow_id\":");
    body.extend_from_slice(flow_id.as_bytes());
    body.extend_from_slice(b",\"status\":\"");
    body.extend_from_slice(status_text.as_bytes());
    body.extend_from_slice(b"\",\"task_status\":");
    body.push(b'0' + status.code());
    body.extend_from_slice(b",\"description\":");
    body.extend_from_slice(description_json.as_bytes());
    body.extend_from_slice(b",\"request_id\":");
    body.extend_from_slice(request_id_json.as_bytes());
    body.push(b'}');
    debug_assert_eq!(body.len(), body.capacity());
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn task(flow_id: i64, status: TaskStatus, description: &str, request_id: &str) -> Task {
        Task {
            flow_id: FlowId::new(flow_id).unwrap(),
            status,
            description: description.into(),
            request_id: request_id.into(),
        }
    }

    #[test]
    fn a_body_from_facts_is_the_body_of_the_task() {
        let now = Instant::now();
        let ttl = Duration::from_secs(86_400);
        for status in [TaskStatus::Succeeded, TaskStatus::Failed] {
            let original = Answer::from_task(
                &task(
                    42,
                    status,
                    "task \"done\"\n\u{1}é",
                    "6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c",
                ),
                now,
                ttl,
                Duration::ZERO,
            );
            let facts = original.facts.clone().expect("a final answer has facts");
            let again = Answer::from_facts(
                facts.clone(),
                &json_string(&facts.description),
                &json_string(&facts.request_id),
                now,
                ttl,
            );
            assert_eq!(again.body, original.body);
            assert_eq!(again.kind, original.kind);
            assert_eq!(again.status, original.status);
            assert_eq!(again.content_type, original.content_type);
            assert_eq!(again.upstream_request_id, original.upstream_request_id);
            assert_eq!(again.facts, original.facts);
        }
    }

    #[test]
    fn processing_answers_have_no_facts() {
        let answer = Answer::from_task(
            &task(1, TaskStatus::Processing, "running", "r"),
            Instant::now(),
            Duration::from_secs(1),
            Duration::from_secs(300),
        );
        assert_eq!(answer.kind, AnswerKind::Processing);
        assert!(answer.facts.is_none());
    }

    proptest! {
        #[test]
        fn rendering_matches_serde_for_any_text(
            flow_id in 0..i64::MAX,
            failed in any::<bool>(),
            description in any::<String>(),
            request_id in any::<String>(),
        ) {
            let status = if failed { TaskStatus::Failed } else { TaskStatus::Succeeded };
            let task = task(flow_id, status, &description, &request_id);
            let body = render_task_body(
                task.flow_id,
                status,
                &json_string(&description),
                &json_string(&request_id),
            );
            prop_assert_eq!(body, task.to_json());
        }
    }
}

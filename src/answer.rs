//! The answer taskgate gives for a task, as both the local cache and the shared (Redis) cache
//! hold it: the response body already rendered, its kind, and how long it may be served.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::{ApiError, PROBLEM_JSON};
use crate::task::Task;

/// What kind of answer an entry is; decides its lifetime and its Cache-Control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    Final,
    Processing,
    NotFound,
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
}

impl Answer {
    pub fn from_task(task: &Task, fetched_at: Instant, ttl: Duration, stale_for: Duration) -> Self {
        Self {
            kind: if task.status.is_final() {
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
            upstream_request_id: Some(Arc::from(task.request_id.as_str())),
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

    /// Seconds since the upstream answered, for the `Age` header.
    pub fn age_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.fetched_at).as_secs()
    }
}

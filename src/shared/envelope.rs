//! Answers and errors as they travel between replicas: stored in the shared cache and published
//! to the replicas waiting on a lookup. JSON, so an operator can read them with `redis-cli`.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::answer::{Answer, AnswerKind};
use crate::error::{ApiError, PROBLEM_JSON};

#[derive(Serialize, Deserialize)]
pub(crate) struct AnswerEnvelope {
    kind: String,
    status: u16,
    content_type: String,
    body: String,
    ttl_ms: u64,
    request_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ErrorEnvelope {
    status: u16,
    body: String,
    retry_after_secs: Option<u64>,
    request_id: Option<String>,
}

/// What a peer publishes when its lookup ends.
#[derive(Serialize, Deserialize)]
pub(crate) enum Outcome {
    Answer(AnswerEnvelope),
    Error(ErrorEnvelope),
}

fn kind_name(kind: AnswerKind) -> &'static str {
    match kind {
        AnswerKind::Final => "final",
        AnswerKind::Processing => "processing",
        AnswerKind::NotFound => "not_found",
    }
}

impl AnswerEnvelope {
    pub(crate) fn of(answer: &Answer) -> Self {
        Self {
            kind: kind_name(answer.kind).to_string(),
            status: answer.status,
            content_type: answer.content_type.to_string(),
            body: String::from_utf8_lossy(&answer.body).into_owned(),
            ttl_ms: answer.ttl.as_millis() as u64,
            request_id: answer.upstream_request_id.as_deref().map(str::to_owned),
        }
    }

    /// Rebuilds the answer with `remaining` of its lifetime left at `now`.
    pub(crate) fn into_answer(self, now: Instant, remaining: Duration) -> Option<Answer> {
        let kind = match self.kind.as_str() {
            "final" => AnswerKind::Final,
            "processing" => AnswerKind::Processing,
            "not_found" => AnswerKind::NotFound,
            _ => return None,
        };
        let ttl = Duration::from_millis(self.ttl_ms);
        let remaining = remaining.min(ttl);
        let content_type = match self.content_type.as_str() {
            "application/json" => "application/json",
            _ => PROBLEM_JSON,
        };
        Some(Answer {
            kind,
            status: self.status,
            content_type,
            body: Bytes::from(self.body),
            fetched_at: now.checked_sub(ttl - remaining).unwrap_or(now),
            ttl,
            // Stale-if-error is each replica's own fallback, kept locally only.
            stale_for: Duration::ZERO,
            upstream_request_id: self.request_id.map(|id| std::sync::Arc::from(id.as_str())),
        })
    }
}

impl Outcome {
    pub(crate) fn of(result: &Result<std::sync::Arc<Answer>, ApiError>) -> Self {
        match result {
            Ok(answer) => Self::Answer(AnswerEnvelope::of(answer)),
            Err(error) => Self::Error(ErrorEnvelope {
                status: error.status().as_u16(),
                body: String::from_utf8_lossy(&error.to_body()).into_owned(),
                retry_after_secs: error.retry_after_secs(),
                request_id: error.upstream_request_id().map(str::to_owned),
            }),
        }
    }

    pub(crate) fn into_result(self, now: Instant) -> Option<Result<Answer, ApiError>> {
        match self {
            Self::Answer(envelope) => {
                let ttl = Duration::from_millis(envelope.ttl_ms);
                envelope.into_answer(now, ttl).map(Ok)
            }
            Self::Error(envelope) => Some(Err(ApiError::Relayed {
                status: envelope.status,
                body: Bytes::from(envelope.body),
                retry_after_secs: envelope.retry_after_secs,
                upstream_request_id: envelope.request_id,
            })),
        }
    }
}

//! Answers and errors as they travel between replicas: stored in the shared cache and published
//! to the replicas waiting on a lookup. JSON, so an operator can read them with `redis-cli`.
//!
//! A final answer (most of the shared cache) travels as its facts only, the same data the local
//! cache keeps, not its rendered body:
//!
//! ```json
//! {"f":42,"s":1,"d":"task succeeded","r":"6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c","t":86400000}
//! ```
//!
//! (`f` the flow id, `s` SSM's TaskStatus, `d` the description, `r` the upstream RequestId, `t`
//! the TTL in milliseconds). Processing and not-found answers travel rendered, as before; so
//! did final ones before, and such envelopes are still read (their body is parsed back into
//! facts), so replicas of either version share one Redis during an upgrade.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::answer::{json_string, Answer, AnswerKind, FinalFacts};
use crate::error::{ApiError, PROBLEM_JSON};
use crate::task::{FlowId, TaskStatus};

/// An answer in the shared cache or on its way to a waiting replica.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum AnswerEnvelope {
    Final(FinalEnvelope),
    Rendered(RenderedEnvelope),
}

/// A final answer's facts.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FinalEnvelope {
    #[serde(rename = "f")]
    flow_id: i64,
    #[serde(rename = "s")]
    task_status: i64,
    #[serde(rename = "d")]
    description: String,
    #[serde(rename = "r")]
    request_id: String,
    #[serde(rename = "t")]
    ttl_ms: u64,
}

/// Any answer, rendered.
#[derive(Serialize, Deserialize)]
pub(crate) struct RenderedEnvelope {
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

/// The body of a task as `Task::to_json` writes it, read back (old envelopes of final answers).
#[derive(Deserialize)]
struct TaskBody {
    flow_id: i64,
    task_status: i64,
    description: String,
    request_id: String,
}

/// A final answer from its facts, its body rendered, `remaining` of `ttl` left at `now`.
fn final_answer(facts: FinalFacts, now: Instant, ttl: Duration, remaining: Duration) -> Answer {
    let remaining = remaining.min(ttl);
    let description_json = json_string(&facts.description);
    let request_id_json = json_string(&facts.request_id);
    Answer::from_facts(
        facts,
        &description_json,
        &request_id_json,
        now.checked_sub(ttl - remaining).unwrap_or(now),
        ttl,
    )
}

fn facts(
    flow_id: i64,
    task_status: i64,
    description: String,
    request_id: String,
) -> Option<FinalFacts> {
    let status = TaskStatus::from_code(task_status).filter(|status| status.is_final())?;
    Some(FinalFacts {
        flow_id: FlowId::new(flow_id)?,
        status,
        description: Arc::from(description),
        request_id: Arc::from(request_id),
    })
}

impl AnswerEnvelope {
    pub(crate) fn of(answer: &Answer) -> Self {
        if let (AnswerKind::Final, Some(facts)) = (answer.kind, &answer.facts) {
            return Self::Final(FinalEnvelope {
                flow_id: facts.flow_id.get(),
                task_status: i64::from(facts.status.code()),
                description: facts.description.to_string(),
                request_id: facts.request_id.to_string(),
                ttl_ms: answer.ttl.as_millis() as u64,
            });
        }
        Self::Rendered(RenderedEnvelope {
            kind: kind_name(answer.kind).to_string(),
            status: answer.status,
            content_type: answer.content_type.to_string(),
            body: String::from_utf8_lossy(&answer.body).into_owned(),
            ttl_ms: answer.ttl.as_millis() as u64,
            request_id: answer.upstream_request_id.as_deref().map(str::to_owned),
        })
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(match self {
            Self::Final(envelope) => envelope.ttl_ms,
            Self::Rendered(envelope) => envelope.ttl_ms,
        })
    }

    /// Rebuilds the answer with `remaining` of its lifetime left at `now`.
    pub(crate) fn into_answer(self, now: Instant, remaining: Duration) -> Option<Answer> {
        let ttl = self.ttl();
        let envelope = match self {
            Self::Final(envelope) => {
                let facts = facts(
                    envelope.flow_id,
                    envelope.task_status,
                    envelope.description,
                    envelope.request_id,
                )?;
                return Some(final_answer(facts, now, ttl, remaining));
            }
            Self::Rendered(envelope) => envelope,
        };
        let kind = match envelope.kind.as_str() {
            "final" => {
                // Written by an older replica: the same answer, from its body's facts.
                let body: TaskBody = serde_json::from_str(&envelope.body).ok()?;
                let facts = facts(
                    body.flow_id,
                    body.task_status,
                    body.description,
                    body.request_id,
                )?;
                return Some(final_answer(facts, now, ttl, remaining));
            }
            "processing" => AnswerKind::Processing,
            "not_found" => AnswerKind::NotFound,
            _ => return None,
        };
        let remaining = remaining.min(ttl);
        let content_type = match envelope.content_type.as_str() {
            "application/json" => "application/json",
            _ => PROBLEM_JSON,
        };
        Some(Answer {
            kind,
            status: envelope.status,
            content_type,
            body: Bytes::from(envelope.body),
            fetched_at: now.checked_sub(ttl - remaining).unwrap_or(now),
            ttl,
            // Stale-if-error is each replica's own fallback, kept locally only.
            stale_for: Duration::ZERO,
            upstream_request_id: envelope.request_id.map(|id| Arc::from(id.as_str())),
            facts: None,
        })
    }
}

impl Outcome {
    pub(crate) fn of(result: &Result<Arc<Answer>, ApiError>) -> Self {
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
                let ttl = envelope.ttl();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Task;

    fn final_task() -> Answer {
        let task = Task {
            flow_id: FlowId::new(42).unwrap(),
            status: TaskStatus::Failed,
            description: "boom \"quoted\"".into(),
            request_id: "6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c".into(),
        };
        Answer::from_task(
            &task,
            Instant::now(),
            Duration::from_secs(86_400),
            Duration::ZERO,
        )
    }

    fn assert_same(a: &Answer, b: &Answer) {
        assert_eq!(a.body, b.body);
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.status, b.status);
        assert_eq!(a.content_type, b.content_type);
        assert_eq!(a.ttl, b.ttl);
        assert_eq!(a.upstream_request_id, b.upstream_request_id);
        assert_eq!(a.facts, b.facts);
    }

    #[test]
    fn a_final_answer_travels_as_its_facts_and_comes_back_whole() {
        let answer = final_task();
        let json = serde_json::to_string(&AnswerEnvelope::of(&answer)).unwrap();
        assert_eq!(
            json,
            r#"{"f":42,"s":2,"d":"boom \"quoted\"","r":"6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c","t":86400000}"#
        );
        let now = Instant::now();
        let back: AnswerEnvelope = serde_json::from_str(&json).unwrap();
        let back = back.into_answer(now, Duration::from_secs(86_000)).unwrap();
        assert_same(&back, &answer);
        assert_eq!(back.age_secs(now), 400);
        // Published to waiting replicas the same way.
        let outcome = serde_json::to_vec(&Outcome::of(&Ok(Arc::new(final_task())))).unwrap();
        let outcome: Outcome = serde_json::from_slice(&outcome).unwrap();
        assert_same(&outcome.into_result(now).unwrap().unwrap(), &answer);
    }

    #[test]
    fn an_old_rendered_final_envelope_is_still_read() {
        let answer = final_task();
        let old = serde_json::json!({
            "kind": "final", "status": 200, "content_type": "application/json",
            "body": String::from_utf8(answer.body.to_vec()).unwrap(),
            "ttl_ms": 86_400_000u64,
            "request_id": "6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c",
        });
        let back: AnswerEnvelope = serde_json::from_value(old).unwrap();
        let back = back
            .into_answer(Instant::now(), Duration::from_secs(86_400))
            .unwrap();
        assert_same(&back, &answer);
    }

    #[test]
    fn processing_answers_travel_rendered() {
        let task = Task {
            flow_id: FlowId::new(7).unwrap(),
            status: TaskStatus::Processing,
            description: "running".into(),
            request_id: "r-1".into(),
        };
        let answer = Answer::from_task(
            &task,
            Instant::now(),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        let json = serde_json::to_vec(&AnswerEnvelope::of(&answer)).unwrap();
        let back: AnswerEnvelope = serde_json::from_slice(&json).unwrap();
        assert!(matches!(back, AnswerEnvelope::Rendered(_)));
        assert_same(
            &back
                .into_answer(Instant::now(), Duration::from_secs(1))
                .unwrap(),
            &answer,
        );
    }
}

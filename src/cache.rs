//! The answer cache (moka): rendered answers kept by task status.
//!
//! - final tasks (succeeded, failed) never change: kept for `TASKGATE_FINAL_TTL` unless memory
//!   pressure evicts them first;
//! - processing tasks are reused for `TASKGATE_PROCESSING_TTL`, so any number of pollers cost at
//!   most one upstream call per interval;
//! - `ResourceNotFound` is remembered for `TASKGATE_NOT_FOUND_TTL` (0: never);
//! - errors are never cached.
//!
//! Entries hold the response body already rendered, so a hit serialises nothing. The capacity is
//! in bytes (body plus a fixed allowance for the entry's bookkeeping).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;
use moka::Expiry;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::task::{FlowId, Task};

/// Bookkeeping per entry beyond its body (key, Arc, timestamps, moka's own node), in bytes.
const ENTRY_OVERHEAD_BYTES: usize = 160;

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
            content_type: crate::error::PROBLEM_JSON,
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

    fn weight(&self) -> u32 {
        u32::try_from(self.body.len() + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
    }
}

/// What the cache holds for a flow id.
pub enum CacheLookup {
    Fresh(Arc<Answer>),
    /// Past its interval but within stale-if-error: a fallback, not an answer.
    Stale(Arc<Answer>),
    Miss,
}

/// TTLs by kind, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    pub final_ttl: Duration,
    pub processing_ttl: Duration,
    pub not_found_ttl: Duration,
    pub stale_if_error: Duration,
}

impl CachePolicy {
    pub fn ttl(&self, kind: AnswerKind) -> Duration {
        match kind {
            AnswerKind::Final => self.final_ttl,
            AnswerKind::Processing => self.processing_ttl,
            AnswerKind::NotFound => self.not_found_ttl,
        }
    }
}

struct ByAnswerTtl;

impl Expiry<FlowId, Arc<Answer>> for ByAnswerTtl {
    fn expire_after_create(
        &self,
        _key: &FlowId,
        value: &Arc<Answer>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        // Answers from the shared cache arrive part-way through their lifetime.
        Some(value.usable(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _key: &FlowId,
        value: &Arc<Answer>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.usable(Instant::now()))
    }
}

/// The cache shared by all workers.
#[derive(Clone)]
pub struct AnswerCache {
    entries: Cache<FlowId, Arc<Answer>>,
    policy: CachePolicy,
}

impl AnswerCache {
    pub fn new(capacity_bytes: u64, policy: CachePolicy) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_key: &FlowId, answer: &Arc<Answer>| answer.weight())
            .expire_after(ByAnswerTtl)
            .build();
        Self { entries, policy }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// A fresh answer, or a stale one kept for stale-if-error, or nothing.
    pub async fn lookup(&self, flow_id: FlowId, now: Instant) -> CacheLookup {
        match self.entries.get(&flow_id).await {
            Some(answer) if !answer.remaining(now).is_zero() => CacheLookup::Fresh(answer),
            Some(answer) if !answer.usable(now).is_zero() => CacheLookup::Stale(answer),
            _ => CacheLookup::Miss,
        }
    }

    /// Keeps an answer for as long as its kind allows (a zero TTL keeps nothing).
    pub async fn insert(&self, flow_id: FlowId, answer: Arc<Answer>) {
        if !answer.usable(Instant::now()).is_zero() {
            self.entries.insert(flow_id, answer).await;
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Applies pending evictions so the size gauges are current (called at scrape time).
    pub async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
    }
}

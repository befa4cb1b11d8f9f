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

use moka::future::Cache;
use moka::Expiry;
use tokio::time::Instant;

use crate::answer::{Answer, AnswerKind};
use crate::support::Clock;
use crate::task::FlowId;

/// Bookkeeping per entry beyond its body (key, Arc, timestamps, moka's own node), in bytes.
const ENTRY_OVERHEAD_BYTES: usize = 160;

/// What an entry counts against `TASKGATE_CACHE_CAPACITY`.
fn weight(answer: &Answer) -> u32 {
    u32::try_from(answer.body.len() + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
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

/// Each entry lives for as long as its answer may be served, stale-if-error included. Read on
/// taskgate's clock, not moka's: answers carry `fetched_at` from it.
struct ByAnswerTtl {
    clock: Arc<dyn Clock>,
}

impl Expiry<FlowId, Arc<Answer>> for ByAnswerTtl {
    fn expire_after_create(
        &self,
        _key: &FlowId,
        value: &Arc<Answer>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        // Answers from the shared cache arrive part-way through their lifetime.
        Some(value.usable(self.clock.now()))
    }

    fn expire_after_update(
        &self,
        _key: &FlowId,
        value: &Arc<Answer>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.usable(self.clock.now()))
    }
}

/// The cache shared by all workers.
#[derive(Clone)]
pub struct AnswerCache {
    entries: Cache<FlowId, Arc<Answer>>,
    policy: CachePolicy,
    clock: Arc<dyn Clock>,
}

impl AnswerCache {
    pub fn new(capacity_bytes: u64, policy: CachePolicy, clock: Arc<dyn Clock>) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_key: &FlowId, answer: &Arc<Answer>| weight(answer))
            .expire_after(ByAnswerTtl {
                clock: Arc::clone(&clock),
            })
            .build();
        Self {
            entries,
            policy,
            clock,
        }
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
        if !answer.usable(self.clock.now()).is_zero() {
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

//! The answer cache (moka): answers kept by task status.
//!
//! - final tasks (succeeded, failed) never change: kept for `TASKGATE_FINAL_TTL` unless the
//!   byte bound evicts them first;
//! - processing tasks are reused for `TASKGATE_PROCESSING_TTL`, so any number of pollers cost at
//!   most one upstream call per interval;
//! - `ResourceNotFound` is remembered for `TASKGATE_NOT_FOUND_TTL` (0: never);
//! - errors are never cached.
//!
//! Final answers, most of the cache, are kept compact (`compact`: 32 bytes each) in blocks of
//! 64 neighbouring flow ids (`blocks`), one moka entry per block, and their body is rendered
//! again on a hit. Processing and not-found answers are kept as they are, rendered, one entry
//! each. Both share one moka cache and one byte bound, `TASKGATE_CACHE_CAPACITY`: every entry
//! weighs what it really occupies (moka's own bookkeeping, measured, plus its heap bytes), so
//! the process's memory follows the bound (see the README's sizing section).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::Expiry;
use tokio::time::Instant;

use super::blocks::{allocated, block_of, Block};
use super::compact::{DescriptionText, Descriptions, Epoch, RequestIdText, Slot};
use super::hot::{HotFinals, HotHit};
use crate::answer::{json_string, Answer, AnswerKind, FinalFacts};
use crate::support::Clock;
use crate::task::FlowId;

/// What moka itself takes per entry (its node, key, timer and queue links, hash table share,
/// with per-entry expiry), measured with `bench/cache_memory.sh` (one answer per block, so one
/// entry per answer): see BENCHMARKS.md.
pub(crate) const MOKA_ENTRY_BYTES: usize = 368;

/// Keys of the one moka cache: a block of final answers, or a single answer (processing, not
/// found), told apart by the top bit.
const SINGLE: u64 = 1 << 63;

fn single_key(flow_id: FlowId) -> u64 {
    SINGLE | flow_id.get() as u64
}

/// What one cache entry holds.
#[derive(Clone)]
enum Entry {
    Finals(Arc<Block>),
    Single(Arc<Answer>),
}

impl Entry {
    fn answers(&self) -> i64 {
        match self {
            Self::Finals(block) => block.len() as i64,
            Self::Single(_) => 1,
        }
    }
}

/// What an entry counts against `TASKGATE_CACHE_CAPACITY`: what it occupies, in bytes.
fn weight(entry: &Entry) -> u32 {
    let heap = match entry {
        Entry::Finals(block) => block.heap_bytes(),
        Entry::Single(answer) => {
            allocated(std::mem::size_of::<Answer>() + 2 * std::mem::size_of::<usize>())
                + allocated(answer.body.len())
                + answer.upstream_request_id.as_ref().map_or(0, |id| {
                    allocated(id.len() + 2 * std::mem::size_of::<usize>())
                })
        }
    };
    u32::try_from(MOKA_ENTRY_BYTES + heap).unwrap_or(u32::MAX)
}

/// `text` as a JSON string when nothing in it needs escaping (the demo's and fakes' request
/// ids): quotes around it, without serde's machinery.
fn plain_json(text: &str) -> Option<String> {
    if !text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        return None;
    }
    let mut json = String::with_capacity(text.len() + 2);
    json.push('"');
    json.push_str(text);
    json.push('"');
    Some(json)
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

/// A processing answer is due again in the last this-many-th of its interval.
const PROCESSING_DUE_EARLY: u32 = 20;

/// A refresh whose slot comes within this-many-th of the interval is waited for by its callers.
const REFRESH_WAIT_SHARE: u32 = 10;

impl CachePolicy {
    /// How long a processing answer is reused: its interval less a twentieth. A caller polling
    /// at the interval asks a moment before or after it has passed (a timer, a sleep after each
    /// answer); reused for exactly the interval, its answer would be refreshed only at every
    /// other poll and a completion seen up to two intervals late.
    pub fn processing_reuse(&self) -> Duration {
        self.processing_ttl - self.processing_ttl / PROCESSING_DUE_EARLY
    }

    /// How long the answer of a refresh is reused when its call was sent `queued` after the
    /// lookup that asked for it: counted from the ask, not the send. Its poller comes back an
    /// interval after it asked; reused for a whole interval from a late send, the answer would
    /// still be fresh then, that poll a hit, and the next refresh asked only at the poll after.
    /// Under exact saturation (20 tasks polled every second at 20/s, refreshes queued for a
    /// fraction of a second) tasks were refreshed at every other poll and completions seen up to
    /// two seconds late. Its `Age` still counts from the send.
    pub fn refresh_reuse(&self, queued: Duration) -> Duration {
        self.processing_reuse().saturating_sub(queued)
    }

    /// How soon a refresh's slot must be expected for its callers to wait for the fresh answer
    /// rather than take the last known one at once: a tenth of the interval (100 ms at 1 s).
    /// Without it, a poll that found every slot taken for a few tens of milliseconds more was
    /// answered a status an interval old, and its refresh, made just after, was seen only at
    /// the next poll; that poll came back a second later, a moment before the slot was free
    /// again, and so did every one after it: a task answered from a refresh made just after the
    /// poll before, its completion seen up to two intervals late (N = 20 at 20/s with three
    /// replicas). Waiting the moment lengthens that caller's cycle by as much, so the slot is
    /// free at its next poll. A refresh that has to queue longer (the budget short, not just
    /// busy) is answered from what is known at once, as before.
    pub fn refresh_wait(&self) -> Duration {
        self.processing_ttl / REFRESH_WAIT_SHARE
    }
}

/// Each entry lives for as long as its answers may be served (a block: its newest answer),
/// stale-if-error included. Read on taskgate's clock, not moka's: answers carry `fetched_at`
/// from it.
struct ByAnswerTtl {
    clock: Arc<dyn Clock>,
    epoch: Epoch,
    final_ttl: Duration,
}

impl ByAnswerTtl {
    fn lifetime(&self, entry: &Entry) -> Duration {
        let now = self.clock.now();
        match entry {
            Entry::Single(answer) => answer.usable(now),
            Entry::Finals(block) => block
                .slots()
                .map(|slot| {
                    (slot.fetched_at(self.epoch) + self.final_ttl).saturating_duration_since(now)
                })
                .max()
                .unwrap_or(Duration::ZERO),
        }
    }
}

impl Expiry<u64, Entry> for ByAnswerTtl {
    fn expire_after_create(
        &self,
        _key: &u64,
        value: &Entry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        // Answers from the shared cache arrive part-way through their lifetime.
        Some(self.lifetime(value))
    }

    fn expire_after_update(
        &self,
        _key: &u64,
        value: &Entry,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }
}

/// The cache shared by all workers.
#[derive(Clone)]
pub struct AnswerCache {
    entries: Cache<u64, Entry>,
    policy: CachePolicy,
    clock: Arc<dyn Clock>,
    epoch: Epoch,
    descriptions: Arc<Descriptions>,
    /// The final answers hit last, kept rendered.
    hot: Arc<HotFinals>,
    /// Answers held (a block counts its answers), kept by inserts and the eviction listener.
    answers: Arc<AtomicI64>,
}

impl AnswerCache {
    pub fn new(capacity_bytes: u64, policy: CachePolicy, clock: Arc<dyn Clock>) -> Self {
        let epoch = Epoch(clock.now());
        let answers = Arc::new(AtomicI64::new(0));
        let removed = Arc::clone(&answers);
        let entries = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_key: &u64, entry: &Entry| weight(entry))
            // Least recently used goes first. TinyLFU (moka's default) refuses a newcomer that
            // is not asked more often than what it would evict: once full, it kept the old
            // answers and turned the newest away, and a block's first answer always is new.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(ByAnswerTtl {
                clock: Arc::clone(&clock),
                epoch,
                final_ttl: policy.final_ttl,
            })
            // Every value that leaves (replaced, expired, evicted) takes its answers along.
            .eviction_listener(move |_key, entry: Entry, _cause| {
                removed.fetch_sub(entry.answers(), Ordering::Relaxed);
            })
            .build();
        Self {
            entries,
            policy,
            clock,
            epoch,
            descriptions: Arc::new(Descriptions::default()),
            hot: Arc::new(HotFinals::default()),
            answers,
        }
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// A fresh answer, or a stale one kept for stale-if-error, or nothing.
    pub async fn lookup(&self, flow_id: FlowId, now: Instant) -> CacheLookup {
        let (block_key, index) = block_of(flow_id);
        if let HotHit::Fresh { answer, touch } = self.hot.get(flow_id, now) {
            if touch {
                self.entries.get(&block_key).await;
            }
            return CacheLookup::Fresh(answer);
        }
        if let Some(Entry::Finals(block)) = self.entries.get(&block_key).await {
            if let Some(answer) = block
                .get(index)
                .and_then(|slot| self.final_answer(flow_id, &block, slot, now))
            {
                let answer = Arc::new(answer);
                self.hot.hit_in_cache(flow_id, &answer);
                return CacheLookup::Fresh(answer);
            }
        }
        match self.entries.get(&single_key(flow_id)).await {
            Some(Entry::Single(answer)) if !answer.remaining(now).is_zero() => {
                CacheLookup::Fresh(answer)
            }
            Some(Entry::Single(answer)) if !answer.usable(now).is_zero() => {
                CacheLookup::Stale(answer)
            }
            _ => CacheLookup::Miss,
        }
    }

    /// A final answer rendered from its slot, if it is still fresh.
    fn final_answer(
        &self,
        flow_id: FlowId,
        block: &Block,
        slot: &Slot,
        now: Instant,
    ) -> Option<Answer> {
        let ttl = self.policy.final_ttl;
        let view = slot.view(self.epoch, block.aside(), &self.descriptions)?;
        if (view.fetched_at + ttl)
            .saturating_duration_since(now)
            .is_zero()
        {
            return None;
        }
        let mut uuid_json = [b'"'; 38];
        let request_id_aside_json;
        let (request_id, request_id_json): (Arc<str>, &str) = match &view.request_id {
            RequestIdText::Uuid(text) => {
                uuid_json[1..37].copy_from_slice(text);
                let json = std::str::from_utf8(&uuid_json).expect("hex digits and hyphens");
                (Arc::from(&json[1..37]), json)
            }
            RequestIdText::Aside(text) => {
                request_id_aside_json = plain_json(text).unwrap_or_else(|| json_string(text));
                (Arc::clone(text), request_id_aside_json.as_str())
            }
        };
        let description_aside_json;
        let (description, description_json) = match view.description {
            DescriptionText::Interned(interned) => (Arc::clone(&interned.text), &*interned.json),
            DescriptionText::Aside(text) => {
                description_aside_json = json_string(text);
                (Arc::clone(text), description_aside_json.as_str())
            }
        };
        let facts = FinalFacts {
            flow_id,
            status: view.status,
            description,
            request_id,
        };
        Some(Answer::from_facts(
            facts,
            description_json,
            request_id_json,
            view.fetched_at,
            ttl,
        ))
    }

    /// Keeps an answer for as long as its kind allows (a zero TTL keeps nothing).
    pub async fn insert(&self, flow_id: FlowId, answer: Arc<Answer>) {
        let now = self.clock.now();
        if answer.usable(now).is_zero() {
            return;
        }
        match (&answer.facts, answer.kind) {
            (Some(facts), AnswerKind::Final) if facts.flow_id == flow_id => {
                self.insert_final(flow_id, facts, answer.fetched_at, now)
                    .await;
                // A final answer ends what was known of the task before.
                let single = single_key(flow_id);
                if self.entries.contains_key(&single) {
                    self.entries.invalidate(&single).await;
                }
            }
            _ => {
                self.answers.fetch_add(1, Ordering::Relaxed);
                self.entries
                    .insert(single_key(flow_id), Entry::Single(answer))
                    .await;
            }
        }
    }

    /// Adds a final answer to its block, in one atomic step of the cache (the block is rebuilt
    /// with it, its expired answers left out).
    async fn insert_final(
        &self,
        flow_id: FlowId,
        facts: &FinalFacts,
        fetched_at: Instant,
        now: Instant,
    ) {
        let (block, index) = block_of(flow_id);
        let parts = Slot::of(
            facts.status,
            &facts.description,
            &facts.request_id,
            fetched_at,
            self.epoch,
            &self.descriptions,
        );
        let epoch = self.epoch;
        let ttl = self.policy.final_ttl;
        let answers = &self.answers;
        self.entries
            .entry(block)
            .and_compute_with(|current| {
                let fresh = |slot: &Slot| {
                    !(slot.fetched_at(epoch) + ttl)
                        .saturating_duration_since(now)
                        .is_zero()
                };
                let next = match current.map(|entry| entry.into_value()) {
                    Some(Entry::Finals(old)) => old.with(index, parts, fresh),
                    _ => Block::default().with(index, parts, fresh),
                };
                // Counted before the cache can evict it (the listener then takes it back).
                answers.fetch_add(next.len() as i64, Ordering::Relaxed);
                std::future::ready(Op::Put(Entry::Finals(Arc::new(next))))
            })
            .await;
    }

    /// Answers held: every final answer of every block, and every single answer.
    pub fn entry_count(&self) -> u64 {
        self.answers.load(Ordering::Relaxed).max(0) as u64
    }

    /// The bounded quantity: bytes the entries weigh.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Cache entries (blocks and single answers), for the sizing notes.
    pub fn moka_entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Applies pending evictions so the size gauges are current (called at scrape time).
    pub async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

//! The hot finals: the last final answers hit, kept rendered in a small fixed table beside the
//! compact cache, so a busy task's hits skip moka and the rendering of its body.
//!
//! Final answers are kept compact and rendered again on every hit (`compact`, `blocks`): the
//! right trade for the million answers nobody asks twice, not for the few asked thousands of
//! times a second. Those are kept here, rendered: a direct-mapped table of `HOT_SLOTS` slots
//! (a flow id has one slot), read without a lock (`arc-swap`) by every worker. An answer takes
//! its slot over on its second hit in a row there (the slot remembers the last id hit), so hits
//! spread over many answers, each asked once in a while, do not churn the table. A final answer
//! never changes, so a copy here is as true as the compact one until its time to live ends,
//! which a hit checks as the cache does.
//!
//! Its memory is fixed, not part of the byte bound: at most `HOT_SLOTS` rendered answers
//! (about 400 bytes each, so under half a MiB), inside the bound's fixed allowance (README,
//! "Sizing"). Hits served here do not reach moka, which evicts least recently used first: every
//! `TOUCH_EVERY`th hit of a slot is also read from moka, so a busy answer never looks idle there.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::task::FlowId;

/// Slots of the table: a power of two.
pub(super) const HOT_SLOTS: usize = 1024;

/// How often a hit served here is also read from moka, to keep the answer recent there.
const TOUCH_EVERY: u32 = 64;

/// A rendered final answer and how often it was hit here.
struct Hot {
    flow_id: FlowId,
    answer: Arc<Answer>,
    hits: AtomicU32,
}

/// What a look into the table found.
pub(super) enum HotHit {
    /// A fresh answer; `touch` when this hit should also be read from moka.
    Fresh { answer: Arc<Answer>, touch: bool },
    /// Nothing fresh for this flow id.
    Cold,
}

/// One slot: the answer kept, and the flow id of the last hit that found it elsewhere.
#[derive(Default)]
struct Slot {
    hot: ArcSwapOption<Hot>,
    candidate: AtomicI64,
}

/// The table of hot final answers, shared by every worker.
pub(super) struct HotFinals {
    slots: Box<[Slot]>,
}

impl Default for HotFinals {
    fn default() -> Self {
        Self {
            slots: (0..HOT_SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

impl HotFinals {
    /// The slot of a flow id: its low bits, so `HOT_SLOTS` neighbouring ids (SSM numbers its
    /// flows in sequence) never share one.
    fn slot(&self, flow_id: FlowId) -> &Slot {
        &self.slots[(flow_id.get() as u64 as usize) & (HOT_SLOTS - 1)]
    }

    /// The answer kept for `flow_id`, if it is still fresh at `now`.
    pub(super) fn get(&self, flow_id: FlowId, now: Instant) -> HotHit {
        let guard = self.slot(flow_id).hot.load();
        match guard.as_deref() {
            Some(hot) if hot.flow_id == flow_id && !hot.answer.remaining(now).is_zero() => {
                let hits = hot.hits.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                HotHit::Fresh {
                    answer: Arc::clone(&hot.answer),
                    touch: hits % TOUCH_EVERY == 0,
                }
            }
            _ => HotHit::Cold,
        }
    }

    /// Told of a final answer just hit in the cache: keeps it in place of whatever held its
    /// slot when the slot's previous hit in the cache was this flow id too.
    pub(super) fn hit_in_cache(&self, flow_id: FlowId, answer: &Arc<Answer>) {
        let slot = self.slot(flow_id);
        if slot.candidate.swap(flow_id.get(), Ordering::Relaxed) != flow_id.get() {
            return;
        }
        slot.hot.store(Some(Arc::new(Hot {
            flow_id,
            answer: Arc::clone(answer),
            hits: AtomicU32::new(0),
        })));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::answer::{AnswerKind, FinalFacts};
    use crate::task::TaskStatus;

    fn final_answer(flow_id: FlowId, fetched_at: Instant, ttl: Duration) -> Arc<Answer> {
        let facts = FinalFacts {
            flow_id,
            status: TaskStatus::Succeeded,
            description: Arc::from("done"),
            request_id: Arc::from("r-1"),
        };
        let answer = Answer::from_facts(facts, "\"done\"", "\"r-1\"", fetched_at, ttl);
        assert_eq!(answer.kind, AnswerKind::Final);
        Arc::new(answer)
    }

    fn id(n: i64) -> FlowId {
        FlowId::parse(&n.to_string()).unwrap()
    }

    #[test]
    fn an_answer_kept_is_served_until_its_time_to_live_ends() {
        let hot = HotFinals::default();
        let now = Instant::now();
        let answer = final_answer(id(7), now, Duration::from_secs(10));
        assert!(matches!(hot.get(id(7), now), HotHit::Cold));
        hot.hit_in_cache(id(7), &answer);
        assert!(
            matches!(hot.get(id(7), now), HotHit::Cold),
            "one hit is not hot"
        );
        hot.hit_in_cache(id(7), &answer);
        match hot.get(id(7), now + Duration::from_secs(9)) {
            HotHit::Fresh { answer: found, .. } => assert!(Arc::ptr_eq(&found, &answer)),
            HotHit::Cold => panic!("kept and fresh"),
        }
        assert!(matches!(
            hot.get(id(7), now + Duration::from_secs(10)),
            HotHit::Cold
        ));
    }

    #[test]
    fn a_slot_holds_one_flow_id_and_a_newcomer_hit_twice_in_a_row_takes_it_over() {
        let hot = HotFinals::default();
        let now = Instant::now();
        let first = id(1);
        let second = (2..)
            .map(id)
            .find(|other| std::ptr::eq(hot.slot(*other), hot.slot(first)))
            .unwrap();
        let (first_answer, second_answer) = (
            final_answer(first, now, Duration::from_secs(10)),
            final_answer(second, now, Duration::from_secs(10)),
        );
        hot.hit_in_cache(first, &first_answer);
        hot.hit_in_cache(first, &first_answer);
        assert!(
            matches!(hot.get(second, now), HotHit::Cold),
            "not its answer"
        );
        hot.hit_in_cache(second, &second_answer);
        assert!(matches!(hot.get(first, now), HotHit::Fresh { .. }), "kept");
        hot.hit_in_cache(second, &second_answer);
        assert!(matches!(hot.get(first, now), HotHit::Cold), "taken over");
        assert!(matches!(hot.get(second, now), HotHit::Fresh { .. }));
    }

    #[test]
    fn every_sixty_fourth_hit_is_also_read_from_moka() {
        let hot = HotFinals::default();
        let now = Instant::now();
        let answer = final_answer(id(9), now, Duration::from_secs(10));
        hot.hit_in_cache(id(9), &answer);
        hot.hit_in_cache(id(9), &answer);
        let touches: Vec<usize> = (1..=200)
            .filter(|_| matches!(hot.get(id(9), now), HotHit::Fresh { touch: true, .. }))
            .collect();
        assert_eq!(touches.len(), 200 / TOUCH_EVERY as usize);
    }

    #[test]
    fn neighbouring_ids_never_share_a_slot() {
        let hot = HotFinals::default();
        let used: std::collections::HashSet<*const Slot> = (5_000..5_000 + HOT_SLOTS as i64)
            .map(|n| hot.slot(id(n)) as *const _)
            .collect();
        assert_eq!(used.len(), HOT_SLOTS);
    }
}

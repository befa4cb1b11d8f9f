//! Tests of the answer cache: hits give back exactly the answer that was stored, the byte
//! bound evicts (neighbouring ids and ids far apart), and the answer count follows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{AnswerCache, CacheLookup, CachePolicy};
use crate::answer::{Answer, AnswerKind};
use crate::support::Clock;
use crate::task::{FlowId, Task, TaskStatus};

/// A clock the test moves.
struct TestClock(Mutex<Instant>);

impl Clock for TestClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
    fn unix_seconds(&self) -> i64 {
        0
    }
}

impl TestClock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

const POLICY: CachePolicy = CachePolicy {
    final_ttl: Duration::from_secs(86_400),
    processing_ttl: Duration::from_secs(1),
    not_found_ttl: Duration::from_secs(2),
    stale_if_error: Duration::from_secs(300),
};

fn cache(capacity: u64) -> (AnswerCache, Arc<TestClock>) {
    let clock = Arc::new(TestClock(Mutex::new(Instant::now())));
    (AnswerCache::new(capacity, POLICY, clock.clone()), clock)
}

fn task(flow_id: i64, status: TaskStatus, description: &str, request_id: &str) -> Task {
    Task {
        flow_id: FlowId::new(flow_id).unwrap(),
        status,
        description: description.into(),
        request_id: request_id.into(),
    }
}

fn answer_of(task: &Task, fetched_at: Instant) -> Arc<Answer> {
    let (ttl, stale_for) = if task.status.is_final() {
        (POLICY.final_ttl, Duration::ZERO)
    } else {
        (POLICY.processing_ttl, POLICY.stale_if_error)
    };
    Arc::new(Answer::from_task(task, fetched_at, ttl, stale_for))
}

fn uuid(i: u64) -> String {
    format!("6f1a2b3c-0d4e-4f5a-8b6c-{i:012x}")
}

async fn fresh(cache: &AnswerCache, flow_id: i64, now: Instant) -> Option<Arc<Answer>> {
    match cache.lookup(FlowId::new(flow_id).unwrap(), now).await {
        CacheLookup::Fresh(answer) => Some(answer),
        _ => None,
    }
}

#[tokio::test]
async fn a_hit_is_the_answer_that_was_stored_byte_for_byte() {
    let (cache, clock) = cache(1 << 30);
    let long = "l".repeat(300);
    let tasks = [
        task(1, TaskStatus::Succeeded, "task succeeded", &uuid(1)),
        task(
            2,
            TaskStatus::Failed,
            "boom \"quoted\"\n\\ é \u{7}",
            &uuid(2),
        ),
        task(
            3,
            TaskStatus::Succeeded,
            "task succeeded",
            "fake-00000000deadbeef",
        ),
        task(
            4,
            TaskStatus::Failed,
            &long,
            "6F1A2B3C-0D4E-4F5A-8B6C-7D8E9F0A1B2C",
        ),
        task(i64::MAX, TaskStatus::Succeeded, "", ""),
        task(64, TaskStatus::Succeeded, "task succeeded", &uuid(64)),
    ];
    let fetched_at = clock.now();
    let stored: Vec<Arc<Answer>> = tasks.iter().map(|t| answer_of(t, fetched_at)).collect();
    for (task, answer) in tasks.iter().zip(&stored) {
        cache.insert(task.flow_id, Arc::clone(answer)).await;
    }
    clock.advance(Duration::from_millis(2_500));
    let now = clock.now();
    for (task, original) in tasks.iter().zip(&stored) {
        let hit = fresh(&cache, task.flow_id.get(), now).await.expect("a hit");
        assert_eq!(hit.body, original.body, "{task:?}");
        assert_eq!(hit.body.as_ref(), task.to_json().as_slice());
        assert_eq!(hit.kind, AnswerKind::Final);
        assert_eq!(hit.status, original.status);
        assert_eq!(hit.content_type, original.content_type);
        assert_eq!(hit.fetched_at, original.fetched_at);
        assert_eq!(hit.ttl, original.ttl);
        assert_eq!(hit.stale_for, original.stale_for);
        assert_eq!(hit.upstream_request_id, original.upstream_request_id);
        assert_eq!(hit.facts, original.facts);
        assert_eq!(hit.age_secs(now), 2);
        assert_eq!(hit.remaining(now), original.remaining(now));
    }
    assert!(fresh(&cache, 5, now).await.is_none());
    assert_eq!(cache.entry_count(), tasks.len() as u64);
    // 1..4 share a block; 64 and i64::MAX have one each.
    cache.run_pending_tasks().await;
    assert_eq!(cache.moka_entry_count(), 3);
}

#[tokio::test]
async fn final_answers_expire_after_their_ttl() {
    let (cache, clock) = cache(1 << 30);
    let t = task(10, TaskStatus::Succeeded, "task succeeded", &uuid(10));
    cache.insert(t.flow_id, answer_of(&t, clock.now())).await;
    clock.advance(POLICY.final_ttl - Duration::from_millis(1));
    assert!(fresh(&cache, 10, clock.now()).await.is_some());
    clock.advance(Duration::from_millis(1));
    assert!(matches!(
        cache.lookup(t.flow_id, clock.now()).await,
        CacheLookup::Miss
    ));
    // The next answer of the block leaves the expired one out.
    let u = task(11, TaskStatus::Succeeded, "task succeeded", &uuid(11));
    cache.insert(u.flow_id, answer_of(&u, clock.now())).await;
    cache.run_pending_tasks().await;
    assert_eq!(cache.entry_count(), 1);
}

#[tokio::test]
async fn processing_answers_go_stale_and_a_final_one_replaces_them() {
    let (cache, clock) = cache(1 << 30);
    let running = task(20, TaskStatus::Processing, "running", "r-1");
    cache
        .insert(running.flow_id, answer_of(&running, clock.now()))
        .await;
    let hit = fresh(&cache, 20, clock.now()).await.expect("fresh");
    assert_eq!(hit.kind, AnswerKind::Processing);
    assert_eq!(hit.body.as_ref(), running.to_json().as_slice());
    clock.advance(Duration::from_secs(2));
    assert!(matches!(
        cache.lookup(running.flow_id, clock.now()).await,
        CacheLookup::Stale(_)
    ));
    let done = task(20, TaskStatus::Succeeded, "task succeeded", &uuid(20));
    cache
        .insert(done.flow_id, answer_of(&done, clock.now()))
        .await;
    let hit = fresh(&cache, 20, clock.now()).await.expect("fresh");
    assert_eq!(hit.kind, AnswerKind::Final);
    cache.run_pending_tasks().await;
    assert_eq!(cache.entry_count(), 1);
    assert_eq!(cache.moka_entry_count(), 1);
}

/// Fills `count` final answers (`spread`: one per block) and returns (answers held, weighted size).
async fn fill(
    cache: &AnswerCache,
    clock: &TestClock,
    from: u64,
    count: u64,
    spread: bool,
) -> (u64, u64) {
    for i in from..from + count {
        let id = if spread { i * 64 * 7 } else { i };
        let t = task(id as i64, TaskStatus::Succeeded, "task succeeded", &uuid(i));
        cache.insert(t.flow_id, answer_of(&t, clock.now())).await;
    }
    cache.run_pending_tasks().await;
    (cache.entry_count(), cache.weighted_size())
}

#[tokio::test]
async fn the_byte_bound_evicts_and_the_answer_count_levels_off() {
    const CAPACITY: u64 = 256 * 1024;
    for spread in [false, true] {
        let (cache, clock) = cache(CAPACITY);
        let (first, first_size) = fill(&cache, &clock, 0, 12_000, spread).await;
        let (second, second_size) = fill(&cache, &clock, 12_000, 12_000, spread).await;
        assert!(
            first_size <= CAPACITY && second_size <= CAPACITY,
            "{first_size} {second_size}"
        );
        assert!(second < 12_000, "evicted: {second} held (spread: {spread})");
        // Neighbouring answers share blocks: many more fit than one per entry.
        let per_answer = second_size as f64 / second as f64;
        if spread {
            assert!(per_answer > 420.0, "{per_answer}");
        } else {
            assert!(per_answer < 64.0, "{per_answer}");
        }
        let ratio = second as f64 / first as f64;
        assert!(
            (0.8..1.25).contains(&ratio),
            "levels off: {first} then {second}"
        );
        // The most recent answers are the ones held.
        let last = if spread { 23_999 * 64 * 7 } else { 23_999 };
        assert!(fresh(&cache, last, clock.now()).await.is_some());
    }
}

#[tokio::test]
async fn a_busy_answer_served_rendered_stays_in_moka_while_others_are_evicted() {
    const CAPACITY: u64 = 256 * 1024;
    let (cache, clock) = cache(CAPACITY);
    // Far from the spread fill's ids and from their slots in the hot table.
    let busy = 5;
    let t = task(busy, TaskStatus::Succeeded, "task succeeded", &uuid(5));
    cache.insert(t.flow_id, answer_of(&t, clock.now())).await;
    let (busy_block, _) = super::block_of(t.flow_id);
    for round in 0..8 {
        // Busy: its hits are served from the hot table, and some of them read moka.
        for _ in 0..200 {
            assert!(fresh(&cache, busy, clock.now()).await.is_some());
        }
        // Each round alone fills half the bound with answers nobody asks again.
        fill(&cache, &clock, 100 + round * 300, 300, true).await;
    }
    assert!(cache.moka_entry_count() < 8 * 300, "others were evicted");
    assert!(
        cache.entries.contains_key(&busy_block),
        "the busy answer was kept"
    );
}

proptest::proptest! {
    #[test]
    fn plain_request_ids_are_written_as_serde_writes_them(text in proptest::prelude::any::<String>()) {
        if let Some(json) = super::plain_json(&text) {
            proptest::prop_assert_eq!(json, crate::answer::json_string(&text));
        }
    }

    #[test]
    fn ascii_request_ids_are_written_as_serde_writes_them(text in "[ -~]{0,80}") {
        let json = super::plain_json(&text).unwrap_or_else(|| crate::answer::json_string(&text));
        proptest::prop_assert_eq!(json, crate::answer::json_string(&text));
    }
}

#[test]
fn a_refresh_is_reused_for_the_interval_from_when_it_was_asked() {
    // Reused for the interval less a twentieth, counted from the ask: what the wait for a slot
    // took is taken off, and a refresh that waited longer is due at once.
    assert_eq!(POLICY.processing_reuse(), Duration::from_millis(950));
    assert_eq!(
        POLICY.refresh_reuse(Duration::ZERO),
        POLICY.processing_reuse()
    );
    assert_eq!(
        POLICY.refresh_reuse(Duration::from_millis(300)),
        Duration::from_millis(650)
    );
    assert_eq!(POLICY.refresh_reuse(Duration::from_secs(2)), Duration::ZERO);
}

//! The upstream budget: at most N calls in any sliding one-second window, as Tencent counts them.
//!
//! A call holds a slot from the moment it is sent until its answer arrives, and then for one more
//! window plus a margin. Tencent counts a call when it arrives, which is somewhere between our send
//! and our receipt of the answer; counting it until `answer + window` therefore guarantees that no
//! window *at the upstream* sees more than N arrivals, whatever the latency. (Counting only from
//! the send would not: a slow call can arrive late and share a window with later ones.)
//!
//! Lookups that find no slot wait in a bounded FIFO queue; one dispatcher task hands out slots as
//! they free up, in order. A full queue or a wait past `TASKGATE_MAX_QUEUE_WAIT` (or the caller's
//! deadline) is refused with a `Retry-After` computed from the queue as it is.
//!
//! When Tencent throttles us anyway (other clients share the account), the effective limit is
//! halved (at most once per window, never below a quarter of the configured limit) and then
//! recovers by one call per second each second: additive increase, multiplicative decrease, so
//! the gateway stops fighting the other clients without starving its own callers.
//!
//! `BudgetState` is pure (every method takes `now`); `Budget` wraps it with a lock, the queue's
//! channels and the dispatcher.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::callers::CallerName;
use crate::clock::Clock;
use crate::fair_queue::{FairQueue, QueueKey};
use crate::metrics::{BudgetRejection, Metrics};
use crate::shared::budget::{SharedBudget, Take as SharedTake};
use crate::shared::{Mode, Redis};

/// How long the effective limit takes to grow by one call per second after throttling.
const RECOVERY_STEP: Duration = Duration::from_secs(1);

/// Settings from configuration.
#[derive(Debug, Clone, Copy)]
pub struct BudgetConfig {
    pub limit: u32,
    pub window: Duration,
    pub margin: Duration,
    pub max_queue: usize,
    pub max_queue_wait: Duration,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: BudgetRejection,
    /// Whole seconds until a newcomer would likely get a slot (at least 1).
    pub retry_after_secs: u64,
}

/// The pure state of the limiter.
#[derive(Debug)]
pub struct BudgetState {
    config: BudgetConfig,
    in_flight: usize,
    /// When each recently answered call stops counting, ascending.
    cooling: VecDeque<Instant>,
    /// Set by throttling: the reduced limit and when it was set.
    reduced: Option<(u32, Instant)>,
}

impl BudgetState {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            in_flight: 0,
            cooling: VecDeque::new(),
            reduced: None,
        }
    }

    fn purge(&mut self, now: Instant) {
        while self.cooling.front().is_some_and(|until| *until <= now) {
            self.cooling.pop_front();
        }
    }

    /// Slots counted now: calls in flight plus answered calls still inside their window.
    pub fn used(&mut self, now: Instant) -> usize {
        self.purge(now);
        self.in_flight + self.cooling.len()
    }

    /// The limit in force: configured, or reduced after throttling and recovering.
    pub fn effective_limit(&self, now: Instant) -> u32 {
        match self.reduced {
            None => self.config.limit,
            Some((reduced, since)) => {
                let steps = now.saturating_duration_since(since).as_secs_f64()
                    / RECOVERY_STEP.as_secs_f64();
                let recovered = f64::from(reduced) + steps.floor();
                recovered.min(f64::from(self.config.limit)) as u32
            }
        }
    }

    /// Takes a slot if one is free now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_capped(now, None)
    }

    /// The limit in force under an optional `cap` (the local share while Redis is down).
    fn capped_limit(&self, now: Instant, cap: Option<u32>) -> u32 {
        cap.map_or(self.effective_limit(now), |cap| {
            cap.min(self.effective_limit(now))
        })
    }

    /// Takes a slot if one is free now under the effective limit and `cap` (the local share
    /// while Redis is down).
    pub fn try_take_capped(&mut self, now: Instant, cap: Option<u32>) -> bool {
        let limit = self.capped_limit(now, cap);
        if self.used(now) < limit as usize {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// A call's answer arrived at `now`: it keeps counting for one window plus the margin.
    pub fn release(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let until = now + self.config.window + self.config.margin;
        // `now` is monotonic across callers but taken before the lock, so keep the order exact.
        let at = self.cooling.partition_point(|t| *t <= until);
        self.cooling.insert(at, until);
    }

    /// The lowest the effective limit goes: a quarter of the configured one (at least 1), so
    /// persistent throttling slows the gateway down without starving its callers.
    fn floor(&self) -> u32 {
        (self.config.limit / 4).max(1)
    }

    /// Tencent throttled us: halve the effective limit (once per window), then recover.
    pub fn throttled(&mut self, now: Instant) {
        if let Some((_, since)) = self.reduced {
            if now.saturating_duration_since(since) < self.config.window {
                return;
            }
        }
        let halved = (self.effective_limit(now) / 2).max(self.floor());
        self.reduced = Some((halved, now));
    }

    /// When the next slot may free up under `cap` (now, if one is free). None when every slot
    /// is in flight: a release will say so.
    pub fn next_free_at(&mut self, now: Instant, cap: Option<u32>) -> Option<Instant> {
        if self.used(now) < self.capped_limit(now, cap) as usize {
            return Some(now);
        }
        let cooling = self.cooling.front().copied();
        let recovery = self
            .reduced
            .filter(|_| self.effective_limit(now) < self.config.limit)
            .map(|(_, since)| {
                let steps = now.saturating_duration_since(since).as_secs() + 1;
                since + RECOVERY_STEP * steps as u32
            });
        match (cooling, recovery) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the lookup at queue position `position` (0 = next) would likely get a slot.
    /// Slots free at their cooling ends; calls in flight are assumed to answer now; after the
    /// known slots, each further round of `limit` waiters takes one more window.
    pub fn estimate_slot_at(&mut self, now: Instant, position: usize) -> Instant {
        let limit = self.effective_limit(now).max(1) as usize;
        let round = self.config.window + self.config.margin;
        let mut free: Vec<Instant> = Vec::with_capacity(limit);
        let idle = limit.saturating_sub(self.used(now));
        free.extend(std::iter::repeat_n(now, idle));
        free.extend(self.cooling.iter().copied());
        free.extend(std::iter::repeat_n(now + round, self.in_flight));
        free.sort();
        free.truncate(limit);
        while free.len() < limit {
            free.push(now + round);
        }
        let rounds = (position / limit) as u32;
        free[position % limit] + round * rounds
    }

    /// `Retry-After` for a newcomer at `position`, in whole seconds (at least 1).
    pub fn retry_after_secs(&mut self, now: Instant, position: usize) -> u64 {
        let at = self.estimate_slot_at(now, position);
        let wait = at.saturating_duration_since(now);
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }
}

struct Waiter {
    grant: oneshot::Sender<Permit>,
}

struct Shared {
    state: BudgetState,
    /// Lookups waiting for a slot, per caller, served round-robin.
    queue: FairQueue<Waiter>,
    next_waiter_id: u64,
    /// In shared mode: when Redis said the earliest slot frees, as of the last refusal.
    shared_free_at: Option<Instant>,
}

/// Which budget a slot came from; decides how it is released.
enum Slot {
    Local,
    Shared(String),
}

/// The answer of one attempt to take a slot.
enum Take {
    Granted(Slot),
    /// Nothing before this instant (or before a wake-up).
    WaitUntil(Instant),
}

/// The budget shared by every worker (and, with Redis, by every replica).
pub struct Budget {
    shared: Mutex<Shared>,
    wake: Arc<Notify>,
    config: BudgetConfig,
    /// How long an attempt may take at most: a shared slot is held at least that long plus a
    /// window until its release lowers it.
    attempt_timeout: Duration,
    redis: Option<(Arc<Redis>, SharedBudget)>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// A slot for one upstream call. Dropping it (when the answer has arrived, or the call failed)
/// starts the slot's cooling window.
pub struct Permit {
    budget: Arc<Budget>,
    slot: Option<Slot>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = self.budget.clock.now();
        match self.slot.take() {
            Some(Slot::Local) | None => self.budget.lock().state.release(now),
            Some(Slot::Shared(member)) => {
                let budget = Arc::clone(&self.budget);
                tokio::spawn(async move {
                    if let Some((redis, scripts)) = &budget.redis {
                        let cool = budget.config.window + budget.config.margin;
                        scripts.release(redis, &member, cool).await;
                    }
                });
            }
        }
        self.budget.wake.notify_one();
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        // Lets the dispatcher see that the budget is gone and end.
        self.wake.notify_one();
    }
}

impl Budget {
    /// Builds the budget and starts its dispatcher on the current runtime. With `redis`, slots
    /// come from the shared budget while Redis is healthy.
    pub fn start(
        config: BudgetConfig,
        attempt_timeout: Duration,
        redis: Option<Arc<Redis>>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let budget = Arc::new(Self {
            shared: Mutex::new(Shared {
                state: BudgetState::new(config),
                queue: FairQueue::default(),
                next_waiter_id: 0,
                shared_free_at: None,
            }),
            wake: Arc::new(Notify::new()),
            config,
            attempt_timeout,
            redis: redis.map(|r| {
                let scripts = SharedBudget::new(&r);
                (r, scripts)
            }),
            clock,
            metrics,
        });
        let weak = Arc::downgrade(&budget);
        let wake_signal = Arc::clone(&budget.wake);
        tokio::spawn(async move {
            // Runs while the budget exists; a weak handle lets it end with the application.
            loop {
                let wake = wake_signal.notified();
                let Some(budget) = weak.upgrade() else { return };
                let next = budget.dispatch().await;
                drop(budget);
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = wake => {}
                        }
                    }
                    None => wake.await,
                }
            }
        });
        budget
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One try at a slot, from whichever budget is in force now.
    async fn try_take(&self, now: Instant) -> Take {
        let mode = self.redis.as_ref().map(|(redis, _)| redis.mode(now));
        match mode {
            None => self.try_take_local(now, None),
            Some(Mode::Degraded) => {
                let share = self
                    .redis
                    .as_ref()
                    .map(|(redis, _)| redis.local_share(self.config.limit));
                self.try_take_local(now, share)
            }
            Some(Mode::Quiet { until }) => Take::WaitUntil(until),
            Some(Mode::Shared) => {
                let (redis, scripts) = self.redis.as_ref().expect("shared mode has Redis");
                let limit = self.lock().state.effective_limit(now);
                let hold = self.attempt_timeout + self.config.window + self.config.margin;
                match scripts.take(redis, limit, hold).await {
                    Ok(SharedTake::Granted(member)) => {
                        self.lock().shared_free_at = None;
                        Take::Granted(Slot::Shared(member))
                    }
                    Ok(SharedTake::Refused(wait)) => {
                        let at = now + wait;
                        self.lock().shared_free_at = Some(at);
                        Take::WaitUntil(at)
                    }
                    // Redis just failed: the mode is now quiet; look again at once.
                    Err(_) => Take::WaitUntil(now),
                }
            }
        }
    }

    fn try_take_local(&self, now: Instant, cap: Option<u32>) -> Take {
        let mut shared = self.lock();
        if shared.state.try_take_capped(now, cap) {
            Take::Granted(Slot::Local)
        } else {
            let at = shared
                .state
                .next_free_at(now, cap)
                .unwrap_or(now + self.config.window);
            Take::WaitUntil(at.max(now))
        }
    }

    fn permit(self: &Arc<Self>, slot: Slot) -> Permit {
        Permit {
            budget: Arc::clone(self),
            slot: Some(slot),
        }
    }

    /// Hands free slots to the queue's head, in order; returns when to look again.
    async fn dispatch(self: &Arc<Self>) -> Option<Instant> {
        loop {
            let now = self.clock.now();
            let waiting = {
                let shared = self.lock();
                self.publish_gauges(&shared, now);
                !shared.queue.is_empty()
            };
            if !waiting {
                // Still wake for recovery so the effective-rate gauge stays truthful.
                let recovering = self.lock().state.effective_limit(now) < self.config.limit;
                return recovering.then(|| now + RECOVERY_STEP);
            }
            match self.try_take(now).await {
                Take::Granted(slot) => {
                    let permit = self.permit(slot);
                    let waiter = self.lock().queue.pop();
                    match waiter {
                        // A waiter that gave up returns the permit, which is released on drop.
                        Some(waiter) => drop(waiter.grant.send(permit)),
                        None => drop(permit),
                    }
                }
                Take::WaitUntil(at) if at <= now => tokio::task::yield_now().await,
                Take::WaitUntil(at) => return Some(at),
            }
        }
    }

    fn publish_gauges(&self, shared: &Shared, now: Instant) {
        self.metrics
            .budget_queue_depth
            .set(shared.queue.len() as i64);
        self.metrics
            .budget_effective_rate
            .set(f64::from(shared.state.effective_limit(now)));
    }

    /// `Retry-After` for a newcomer at `position` in the queue.
    fn retry_after_secs(&self, shared: &mut Shared, now: Instant, position: usize) -> u64 {
        match (&self.redis, shared.shared_free_at) {
            (Some((redis, _)), Some(free_at)) if redis.mode(now) == Mode::Shared => {
                let limit = shared.state.effective_limit(now).max(1) as usize;
                let round = self.config.window + self.config.margin;
                let at = free_at.max(now) + round * (position / limit) as u32;
                let wait = at.saturating_duration_since(now);
                (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
            }
            _ => shared.state.retry_after_secs(now, position),
        }
    }

    /// Waits for a slot until `deadline` or the queue-wait bound, whichever is first, in the
    /// caller's queue. `on_queued` is told, once, when the lookup has to wait and for about how
    /// long.
    pub async fn acquire(
        self: &Arc<Self>,
        deadline: Instant,
        caller: Option<CallerName>,
        on_queued: impl FnOnce(Refusal),
    ) -> Result<Permit, Refusal> {
        let key: QueueKey = caller.unwrap_or_else(|| Arc::from(""));
        let now = self.clock.now();
        if self.lock().queue.is_empty() {
            if let Take::Granted(slot) = self.try_take(now).await {
                self.metrics.budget_wait.observe(0.0);
                return Ok(self.permit(slot));
            }
        }
        let (id, grant) = {
            let mut shared = self.lock();
            let mut pushed_out = None;
            if shared.queue.len() >= self.config.max_queue {
                pushed_out = shared.queue.make_room_for(&key);
                if pushed_out.is_none() {
                    let position = shared.queue.len();
                    let retry_after_secs = self.retry_after_secs(&mut shared, now, position);
                    drop(shared);
                    return Err(self.refuse(BudgetRejection::QueueFull, retry_after_secs));
                }
            }
            // Its sender dropped, the pushed-out waiter hears "queue full" (outside the lock).
            drop(pushed_out);
            let position = shared.queue.len();
            let (tx, rx) = oneshot::channel();
            let id = shared.next_waiter_id;
            shared.next_waiter_id += 1;
            shared.queue.push(key, id, Waiter { grant: tx });
            self.metrics
                .budget_queue_depth
                .set(shared.queue.len() as i64);
            on_queued(Refusal {
                reason: BudgetRejection::WaitTimeout,
                retry_after_secs: self.retry_after_secs(&mut shared, now, position),
            });
            (id, rx)
        };
        self.wake.notify_one();

        let give_up_at = deadline.min(now + self.config.max_queue_wait);
        let mut grant = grant;
        let outcome = tokio::time::timeout_at(give_up_at, &mut grant).await;
        let waited = self.clock.now().saturating_duration_since(now);
        match outcome {
            Ok(Ok(permit)) => {
                self.metrics.budget_wait.observe(waited.as_secs_f64());
                return Ok(permit);
            }
            Ok(Err(_)) => {
                // Pushed out of a full queue by a caller with fewer waiting.
                let now = self.clock.now();
                let mut shared = self.lock();
                let queued = shared.queue.len();
                let retry_after_secs = self.retry_after_secs(&mut shared, now, queued);
                drop(shared);
                return Err(self.refuse(BudgetRejection::QueueFull, retry_after_secs));
            }
            Err(_) => {}
        }
        let now = self.clock.now();
        let mut shared = self.lock();
        match shared.queue.remove(id) {
            true => {
                let queued = shared.queue.len();
                self.metrics.budget_queue_depth.set(queued as i64);
                // What a newcomer retrying now would face: everyone still queued is ahead of
                // it. Spreads retries out instead of sending them back at once.
                let retry_after_secs = self.retry_after_secs(&mut shared, now, queued);
                drop(shared);
                Err(self.refuse(BudgetRejection::WaitTimeout, retry_after_secs))
            }
            false => {
                // Granted just as the wait ended: the permit is in the channel.
                drop(shared);
                match grant.try_recv() {
                    Ok(permit) => {
                        self.metrics.budget_wait.observe(waited.as_secs_f64());
                        Ok(permit)
                    }
                    Err(_) => Err(self.refuse(BudgetRejection::WaitTimeout, 1)),
                }
            }
        }
    }

    fn refuse(&self, reason: BudgetRejection, retry_after_secs: u64) -> Refusal {
        self.metrics
            .budget_rejections
            .with_label_values(&[reason.as_str()])
            .inc();
        Refusal {
            reason,
            retry_after_secs,
        }
    }

    /// Tencent answered `RequestLimitExceeded`.
    pub fn throttled(&self) {
        let now = self.clock.now();
        let limit = {
            let mut shared = self.lock();
            shared.state.throttled(now);
            shared.state.effective_limit(now)
        };
        self.metrics.budget_effective_rate.set(f64::from(limit));
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(limit: u32) -> BudgetConfig {
        BudgetConfig {
            limit,
            window: Duration::from_secs(1),
            margin: Duration::from_millis(50),
            max_queue: 10,
            max_queue_wait: Duration::from_secs(2),
        }
    }

    #[test]
    fn allows_a_burst_up_to_the_limit_then_waits_a_window_after_the_answers() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(3));
        assert!(state.try_take(t0) && state.try_take(t0) && state.try_take(t0));
        assert!(!state.try_take(t0));
        // Answers arrive 200 ms later; the slots stay taken for a window plus margin after that.
        let answered = t0 + Duration::from_millis(200);
        for _ in 0..3 {
            state.release(answered);
        }
        assert!(!state.try_take(t0 + Duration::from_millis(1_000)));
        assert_eq!(
            state.next_free_at(t0 + Duration::from_millis(1_000), None),
            Some(answered + Duration::from_millis(1_050))
        );
        assert!(state.try_take(answered + Duration::from_millis(1_050)));
    }

    #[test]
    fn a_cap_below_the_limit_is_waited_out_not_spun_on() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(20));
        for _ in 0..6 {
            assert!(state.try_take_capped(t0, Some(6)));
        }
        assert!(!state.try_take_capped(t0, Some(6)));
        // All six in flight: nothing frees until a release (which wakes the dispatcher).
        assert_eq!(state.next_free_at(t0, Some(6)), None);
        state.release(t0);
        let next = state.next_free_at(t0, Some(6)).unwrap();
        assert!(
            next > t0,
            "a future instant, never 'now' while the cap is full"
        );
    }

    #[test]
    fn a_slow_call_keeps_its_slot_until_it_answers() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(1));
        assert!(state.try_take(t0));
        assert!(
            !state.try_take(t0 + Duration::from_secs(5)),
            "still in flight"
        );
    }

    #[test]
    fn throttling_halves_then_recovers_one_per_second() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(20));
        state.throttled(t0);
        assert_eq!(state.effective_limit(t0), 10);
        state.throttled(t0 + Duration::from_millis(500));
        assert_eq!(
            state.effective_limit(t0 + Duration::from_millis(500)),
            10,
            "once per window"
        );
        assert_eq!(state.effective_limit(t0 + Duration::from_secs(3)), 13);
        assert_eq!(state.effective_limit(t0 + Duration::from_secs(60)), 20);
    }

    #[test]
    fn persistent_throttling_stops_at_a_quarter_of_the_limit() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(20));
        for second in 0..10 {
            let now = t0 + Duration::from_secs(second) + Duration::from_millis(10 * second);
            state.throttled(now);
            assert!(state.effective_limit(now) >= 5);
        }
        assert_eq!(state.effective_limit(t0 + Duration::from_millis(9_090)), 5);
    }

    #[test]
    fn retry_after_follows_the_queue() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(2));
        assert!(state.try_take(t0) && state.try_take(t0));
        state.release(t0);
        state.release(t0);
        // Both slots free at t0 + 1.05 s: positions 0 and 1 get them, 2 and 3 one round later.
        assert_eq!(state.retry_after_secs(t0, 0), 2);
        assert_eq!(state.retry_after_secs(t0, 1), 2);
        assert_eq!(state.retry_after_secs(t0, 2), 3);
        assert_eq!(state.retry_after_secs(t0, 5), 4);
    }
}

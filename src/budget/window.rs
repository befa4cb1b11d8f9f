//! The limiter's pure state: at most N calls in any sliding one-second window, as Tencent counts
//! them. Every method takes `now`; nothing here reads a clock, sleeps or locks.
//!
//! A call holds a slot from the moment it is sent until its answer arrives, and then for one more
//! window, and in any case until one window plus a margin after its send. Tencent counts a call
//! when it arrives, which is somewhere between our send and our receipt of the answer; counting it
//! until `answer + window` therefore guarantees that no window *at the upstream* sees more than N
//! arrivals, whatever the latency. (Counting only from the send would not: a slow call can arrive
//! late and share a window with later ones.) The margin after the send (5 ms by default) guards
//! an answer faster than the clocks' granularity; it is not added on top of the answer time, where
//! it would only cost budget (20 ms of latency plus 50 ms of margin would cap 20/s at 18.7), and it
//! is kept small: holding the slot until the answer already covers the latency, and 50 ms after
//! every send capped a fast upstream at 95% of the budget.
//!
//! When Tencent throttles us anyway (other clients share the account), the effective limit is
//! halved (at most once per window, never below a quarter of the configured limit) and then
//! recovers by one call per second each second: additive increase, multiplicative decrease, so
//! the gateway stops fighting the other clients without starving its own callers.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::ceil_secs;

/// How long the effective limit takes to grow by one call per second after throttling.
pub(super) const RECOVERY_STEP: Duration = Duration::from_secs(1);

/// Settings from configuration.
#[derive(Debug, Clone, Copy)]
pub struct BudgetConfig {
    pub limit: u32,
    pub window: Duration,
    pub margin: Duration,
    pub max_queue: usize,
    pub max_queue_wait: Duration,
}

/// The pure state of the limiter.
#[derive(Debug)]
pub(super) struct BudgetState {
    config: BudgetConfig,
    in_flight: usize,
    /// When each recently answered call stops counting, ascending.
    cooling: VecDeque<Instant>,
    /// Set by throttling: the reduced limit and when it was set.
    reduced: Option<(u32, Instant)>,
    /// How long a slot stays held before its window starts (its answer time, at least the
    /// margin), smoothed over recent calls: a slot is used once per window plus this, which is
    /// what the queue's estimates count by.
    hold: Duration,
}

/// The weight of the newest call in the smoothed hold (as TCP smooths its round-trip time).
const HOLD_SMOOTHING: u32 = 8;

impl BudgetState {
    pub(super) fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            in_flight: 0,
            cooling: VecDeque::new(),
            reduced: None,
            hold: config.margin,
        }
    }

    fn purge(&mut self, now: Instant) {
        while self.cooling.front().is_some_and(|until| *until <= now) {
            self.cooling.pop_front();
        }
    }

    /// The usual time from a call's send to its answer (smoothed; at least the margin).
    pub(super) fn usual_answer_time(&self) -> Duration {
        self.hold
    }

    /// Slots counted now: calls in flight plus answered calls still inside their window.
    pub(super) fn used(&mut self, now: Instant) -> usize {
        self.purge(now);
        self.in_flight + self.cooling.len()
    }

    /// Slots counted at `now`, without forgetting the ones that stopped counting (for gauges).
    pub(crate) fn used_at(&self, now: Instant) -> usize {
        self.in_flight + self.cooling.iter().filter(|until| **until > now).count()
    }

    /// When the slots counted now have all stopped counting: the last cooling end, or `None`
    /// while a call is still in flight (its answer, and so its end, is not known yet).
    pub(super) fn held_until(&mut self, now: Instant) -> Option<Instant> {
        self.purge(now);
        if self.in_flight > 0 {
            return None;
        }
        Some(self.cooling.back().copied().unwrap_or(now))
    }

    /// The limit in force: configured, or reduced after throttling and recovering.
    pub(super) fn effective_limit(&self, now: Instant) -> u32 {
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
    #[cfg(test)]
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
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
    pub(super) fn try_take_capped(&mut self, now: Instant, cap: Option<u32>) -> bool {
        let limit = self.capped_limit(now, cap);
        if self.used(now) < limit as usize {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// The answer of a call sent at `sent` arrived at `now`: it keeps counting for one window
    /// after the later of its answer and its send plus the margin.
    pub(super) fn release(&mut self, now: Instant, sent: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let until = now.max(sent + self.config.margin) + self.config.window;
        // One hung call must not stretch every estimate: a sample counts at most a window.
        let held = (until - self.config.window).saturating_duration_since(sent);
        let sample = held.min(self.config.window);
        self.hold = (self.hold * (HOLD_SMOOTHING - 1) + sample) / HOLD_SMOOTHING;
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
    pub(super) fn throttled(&mut self, now: Instant) {
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
    pub(super) fn next_free_at(&mut self, now: Instant, cap: Option<u32>) -> Option<Instant> {
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

    /// When the lookup at queue position `position` (0 = next) would likely get a slot at the
    /// `expected` rate (calls per second; in shared mode the lease's, which may be a fraction:
    /// 20/s over 3 replicas is 6.67/s, spent in leases of 6 and 7). Slots free at their cooling
    /// ends; calls in flight are assumed to answer within the usual answer time; after the known
    /// slots, each further round of waiters takes one more window and the usual answer time (at
    /// 20 ms a round is 1.02 s: counting 1 s told the 900th waiter to come back a second early).
    pub(super) fn estimate_slot_at(
        &mut self,
        now: Instant,
        position: usize,
        expected: Option<f64>,
    ) -> Instant {
        let cap = expected.map(|rate| rate.ceil() as u32);
        let limit = self.capped_limit(now, cap).max(1) as usize;
        let round = self.config.window + self.hold;
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
        let at = free[position % limit] + round * rounds;
        match expected {
            // Rounds of `limit` slots come less often than every window at a fractional rate.
            Some(rate) if rate < limit as f64 => {
                now + at
                    .saturating_duration_since(now)
                    .mul_f64(limit as f64 / rate)
            }
            _ => at,
        }
    }

    /// `Retry-After` for a newcomer at `position`, in whole seconds (at least 1). It asks the
    /// caller back a little before the slot is expected (half a queue wait, at most a second):
    /// back early, the caller waits for the call in the queue and has the answer the moment it
    /// comes; back late, the answer waits for the caller.
    pub(super) fn retry_after_secs(
        &mut self,
        now: Instant,
        position: usize,
        expected: Option<f64>,
    ) -> u64 {
        let at = self.estimate_slot_at(now, position, expected);
        let early = (self.config.max_queue_wait / 2).min(self.config.window);
        ceil_secs(at.saturating_duration_since(now).saturating_sub(early)).max(1)
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
        // Answers arrive 200 ms later; the slots stay taken for a window after that.
        let answered = t0 + Duration::from_millis(200);
        for _ in 0..3 {
            state.release(answered, t0);
        }
        assert!(!state.try_take(t0 + Duration::from_millis(1_000)));
        assert_eq!(
            state.next_free_at(t0 + Duration::from_millis(1_000), None),
            Some(answered + Duration::from_millis(1_000))
        );
        assert!(state.try_take(answered + Duration::from_millis(1_000)));
        // A fast answer still counts until a window plus the margin after its send.
        let sent = answered + Duration::from_millis(1_000);
        state.release(sent + Duration::from_millis(5), sent);
        assert_eq!(
            state.next_free_at(sent + Duration::from_millis(5), Some(1)),
            Some(sent + Duration::from_millis(1_050))
        );
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
        state.release(t0, t0);
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
    fn the_queue_is_estimated_at_the_pace_answers_allow() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(1));
        // Answers take 250 ms: the one slot is used once every 1.25 s.
        let mut sent = t0;
        for _ in 0..40 {
            assert!(state.try_take(sent));
            let answered = sent + Duration::from_millis(250);
            state.release(answered, sent);
            sent = answered + Duration::from_secs(1);
        }
        let now = sent;
        let tenth = state.estimate_slot_at(now, 9, None).duration_since(now);
        assert!(
            (Duration::from_millis(11_100)..=Duration::from_millis(11_300)).contains(&tenth),
            "the 10th waiter nine rounds of 1.25 s on, not of 1.05 s: {tenth:?}"
        );
        // A call that hangs for a minute counts as one window at most.
        assert!(state.try_take(now));
        state.release(now + Duration::from_secs(60), now);
        let later = now + Duration::from_secs(61);
        let tenth = state.estimate_slot_at(later, 9, None).duration_since(later);
        assert!(tenth < Duration::from_millis(14_000), "{tenth:?}");
    }

    #[test]
    fn retry_after_follows_the_queue() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(2));
        assert!(state.try_take(t0) && state.try_take(t0));
        state.release(t0, t0);
        state.release(t0, t0);
        // Both slots free at t0 + 1.05 s: positions 0 and 1 get them, 2 and 3 one round later
        // (2.1 s), 4 and 5 at 3.15 s; each caller is asked back a second (half its 2 s queue
        // wait) before, to wait for the slot in the queue.
        assert_eq!(state.retry_after_secs(t0, 0, None), 1);
        assert_eq!(state.retry_after_secs(t0, 1, None), 1);
        assert_eq!(state.retry_after_secs(t0, 2, None), 2);
        assert_eq!(state.retry_after_secs(t0, 5, None), 3);
        // At 1.5 calls/s in slots of 2 (a lease's fractional share), a round takes 1.33 windows.
        let fifth = state.estimate_slot_at(t0, 5, Some(1.5)).duration_since(t0);
        assert_eq!(fifth, Duration::from_millis(4_200));
    }
}

//! The limiter's pure state: at most N calls in any sliding one-second window, as Tencent counts
//! them. Every method takes `now`; nothing here reads a clock, sleeps or locks.
//!
//! Tencent counts a call when it arrives, somewhere between our send and our receipt of the
//! answer. A slot is taken at the send and held while the call is in flight; when the answer
//! comes, the slot counts for one window after the send plus the call's *hold*, and is then free:
//! - by default the hold is the whole answer time: counting a call until `answer + window` keeps
//!   every window *at the upstream* within N arrivals whatever the latency;
//! - the latency every call pays cancels out, though: if each call reaches Tencent 15 ms after its
//!   send, sends a window apart arrive a window apart. So once the fastest of the recent calls made
//!   on connections already open is known (`REFERENCE_CALLS`), a call holds only the part of its
//!   answer time beyond that fastest one, plus the margin (`TASKGATE_RATE_WINDOW_MARGIN`, 5 ms),
//!   for a way out that was faster than the fastest call's: a call that was slow on its way out
//!   shows it in its answer time and holds that much longer. At 20 ms of latency the slot is used
//!   once per 1.005 s instead of 1.020 s, at 200 ms once per 1.005 s instead of 1.2 s.
//! - a call while a connection was being opened holds its whole answer time, and never joins the
//!   reference: a call on a new (TLS) connection reaches Tencent a handshake after its send, so the
//!   next call on its slot, on the warm connection, arrives that much sooner after its own send.
//!   Before any warm call has answered (at start) there is no reference, and every call holds its
//!   whole answer time.
//!
//! A slot counts at least one window plus the margin after its send in any case.
//!
//! When Tencent throttles us anyway (other clients share the account), the effective limit is
//! halved (at most once per window, never below a quarter of the configured limit) and then
//! recovers by one call per second each second: additive increase, multiplicative decrease, so
//! the gateway stops fighting the other clients without starving its own callers.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::ceil_secs;

/// How many recent answer times of calls made on connections already open the fastest is taken
/// from: the latency every call pays. A few seconds' worth at the limit, so a slower path found
/// later (which only makes holds longer) is forgotten soon, and one fast outlier only shortly
/// makes them so.
const REFERENCE_CALLS: usize = 32;

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
    /// How long a slot stays held after its send before its window starts, smoothed over recent
    /// calls on open connections: a slot is used once per window plus this, which is what the
    /// queue's estimates count by.
    hold: Duration,
    /// The usual time from a call's send to its answer, smoothed.
    answer_time: Duration,
    /// Answer times of the latest calls made while no connection was being opened, oldest first.
    warm_answers: VecDeque<Duration>,
}

/// The weight of the newest call in the smoothed hold and answer time (as TCP smooths its
/// round-trip time).
const HOLD_SMOOTHING: u32 = 8;

impl BudgetState {
    pub(super) fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            in_flight: 0,
            cooling: VecDeque::new(),
            reduced: None,
            hold: config.margin,
            answer_time: config.margin,
            warm_answers: VecDeque::with_capacity(REFERENCE_CALLS),
        }
    }

    fn purge(&mut self, now: Instant) {
        while self.cooling.front().is_some_and(|until| *until <= now) {
            self.cooling.pop_front();
        }
    }

    /// The usual time from a call's send to its answer (smoothed; at least the margin).
    pub(super) fn usual_answer_time(&self) -> Duration {
        self.answer_time
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

    /// The answer of a call sent at `sent` arrived at `now` (or the call failed then), a
    /// connection having been opened meanwhile or not: it keeps counting for one window after its
    /// send plus its hold.
    pub(super) fn release(&mut self, now: Instant, sent: Instant, connection_opened: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let answer = now.saturating_duration_since(sent);
        let hold = if connection_opened {
            // One-offs: no measure of the latency every call pays, nor of the rounds to come.
            answer.max(self.config.margin)
        } else {
            let hold = self.warm_hold(answer);
            self.hold = self.smoothed(self.hold, hold);
            hold
        };
        self.answer_time = self.smoothed(self.answer_time, answer.max(self.config.margin));
        let until = sent + hold + self.config.window;
        // `now` is monotonic across callers but taken before the lock, so keep the order exact.
        let at = self.cooling.partition_point(|t| *t <= until);
        self.cooling.insert(at, until);
    }

    /// The hold of a call made on an open connection that answered in `answer`: what it took
    /// beyond the fastest of the latest such calls, plus the margin (its whole answer time while
    /// there is none to compare with); then it joins them.
    fn warm_hold(&mut self, answer: Duration) -> Duration {
        let margin = self.config.margin;
        let hold = match self.warm_answers.iter().min() {
            Some(fastest) => answer.min(answer.saturating_sub(*fastest) + margin),
            None => answer,
        };
        if self.warm_answers.len() == REFERENCE_CALLS {
            self.warm_answers.pop_front();
        }
        self.warm_answers.push_back(answer);
        hold.max(margin)
    }

    /// `smoothed` moved towards `sample`; one hung call must not stretch every estimate, so a
    /// sample counts at most two windows.
    fn smoothed(&self, smoothed: Duration, sample: Duration) -> Duration {
        let sample = sample.min(2 * self.config.window);
        (smoothed * (HOLD_SMOOTHING - 1) + sample) / HOLD_SMOOTHING
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
    /// slots, each further round of waiters takes one more window and the usual hold (at 20 ms a
    /// round is 1.006 s), or the usual answer time when that is longer (a slot is held while its
    /// call is in flight: behind a 2 s upstream a round takes 2 s).
    pub(super) fn estimate_slot_at(
        &mut self,
        now: Instant,
        position: usize,
        expected: Option<f64>,
    ) -> Instant {
        let cap = expected.map(|rate| rate.ceil() as u32);
        let limit = self.capped_limit(now, cap).max(1) as usize;
        let round = (self.config.window + self.hold).max(self.answer_time);
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

    /// `Retry-After` for a newcomer at `position`, in whole seconds (at least 1).
    pub(super) fn retry_after_secs(
        &mut self,
        now: Instant,
        position: usize,
        expected: Option<f64>,
    ) -> u64 {
        let at = self.estimate_slot_at(now, position, expected);
        self.config.retry_after_secs(now, at)
    }
}

impl BudgetConfig {
    /// `Retry-After` at `now` for a call whose slot is expected `at`, in whole seconds (at least
    /// 1). It asks the caller back a little before the slot is expected (half a queue wait, at
    /// most a second): back early, the caller waits for the call in the queue and has the answer
    /// the moment it comes; back late, the answer waits for the caller.
    pub(super) fn retry_after_secs(&self, now: Instant, at: Instant) -> u64 {
        let early = (self.max_queue_wait / 2).min(self.window);
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
        // Answers arrive 200 ms later, each call having opened its connection (as at start):
        // the slots stay taken for a window after the answers.
        let answered = t0 + Duration::from_millis(200);
        for _ in 0..3 {
            state.release(answered, t0, true);
        }
        assert!(!state.try_take(t0 + Duration::from_millis(1_000)));
        assert_eq!(
            state.next_free_at(t0 + Duration::from_millis(1_000), None),
            Some(answered + Duration::from_millis(1_000))
        );
        assert!(state.try_take(answered + Duration::from_millis(1_000)));
        // A fast answer still counts until a window plus the margin after its send.
        let sent = answered + Duration::from_millis(1_000);
        state.release(sent + Duration::from_millis(5), sent, false);
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
        state.release(t0, t0, false);
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

    /// One call on a one-slot budget, sent at `sent`, answered `answer_ms` later: when the slot
    /// is free again.
    fn free_after(
        state: &mut BudgetState,
        sent: Instant,
        answer_ms: u64,
        connection_opened: bool,
    ) -> Duration {
        assert!(state.try_take(sent));
        let answered = sent + Duration::from_millis(answer_ms);
        state.release(answered, sent, connection_opened);
        let free = state.next_free_at(answered, None).expect("answered");
        free.saturating_duration_since(sent)
    }

    #[test]
    fn the_latency_every_call_pays_is_not_held() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(1));
        let ms = Duration::from_millis;
        // At start the call opens its connection: its whole answer time is held.
        assert_eq!(free_after(&mut state, t0, 250, true), ms(1_250));
        // The first call on the open connection: no call to compare with yet.
        let sent = t0 + ms(1_250);
        assert_eq!(free_after(&mut state, sent, 250, false), ms(1_250));
        // From then on every call pays 250 ms: only the margin is held, sends a window and the
        // margin apart arrive as far apart.
        let sent = sent + ms(1_250);
        assert_eq!(free_after(&mut state, sent, 250, false), ms(1_050));
        // A call 150 ms slower than the fastest may have spent them on its way out: held.
        let sent = sent + ms(1_050);
        assert_eq!(free_after(&mut state, sent, 400, false), ms(1_200));
        // A call faster than any is held the margin, and is the fastest from now on.
        let sent = sent + ms(1_200);
        assert_eq!(free_after(&mut state, sent, 200, false), ms(1_050));
        let sent = sent + ms(1_050);
        assert_eq!(free_after(&mut state, sent, 250, false), ms(1_100));
    }

    #[test]
    fn behind_an_upstream_slower_than_a_window_a_round_takes_its_answer_time() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(1));
        // The first call has nothing to compare with: its 2 s are held, a window after them.
        let mut sent = t0 + free_after(&mut state, t0, 2_000, false);
        for _ in 0..40 {
            // Held while in flight, then free at once: its window after the send is over.
            let free = free_after(&mut state, sent, 2_000, false);
            assert_eq!(free, Duration::from_millis(2_000));
            sent += free;
        }
        let fifth = state.estimate_slot_at(sent, 4, None).duration_since(sent);
        assert!(
            (Duration::from_millis(7_900)..=Duration::from_millis(8_100)).contains(&fifth),
            "the 5th waiter four rounds of 2 s on, not of 1.05 s: {fifth:?}"
        );
    }

    #[test]
    fn a_call_while_a_connection_was_opened_holds_its_whole_answer_time() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(1));
        let ms = Duration::from_millis;
        assert_eq!(free_after(&mut state, t0, 250, false), ms(1_250));
        let sent = t0 + ms(1_250);
        assert_eq!(free_after(&mut state, sent, 250, false), ms(1_050));
        // A new connection: the call may have reached the upstream a handshake after its send,
        // so all of its 300 ms are held (not 50 + 50) ...
        let sent = sent + ms(1_050);
        assert_eq!(free_after(&mut state, sent, 300, true), ms(1_300));
        // ... and a fast one is no measure of the latency every call pays either.
        let sent = sent + ms(1_300);
        assert_eq!(free_after(&mut state, sent, 100, true), ms(1_100));
        let sent = sent + ms(1_100);
        assert_eq!(free_after(&mut state, sent, 250, false), ms(1_050));
    }

    #[test]
    fn the_queue_is_estimated_at_the_pace_answers_allow() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(1));
        // Answers take 250 ms, give or take 100: what varies is held, what every call pays is
        // not; the one slot is used once every 1.1 s on average.
        let mut sent = t0;
        for call in 0..40 {
            let answer = if call % 2 == 0 { 200 } else { 300 };
            sent += free_after(&mut state, sent, answer, false);
        }
        let now = sent;
        let tenth = state.estimate_slot_at(now, 9, None).duration_since(now);
        assert!(
            (Duration::from_millis(9_800)..=Duration::from_millis(10_000)).contains(&tenth),
            "the 10th waiter nine rounds of 1.1 s on, not of 1.05 s or 1.25 s: {tenth:?}"
        );
        let usual = state.usual_answer_time();
        assert!(
            (Duration::from_millis(240)..=Duration::from_millis(260)).contains(&usual),
            "the usual answer time is the answers', about 250 ms: {usual:?}"
        );
        // A call that hangs for a minute counts as two windows at most.
        assert!(state.try_take(now));
        state.release(now + Duration::from_secs(60), now, false);
        let later = now + Duration::from_secs(61);
        let tenth = state.estimate_slot_at(later, 9, None).duration_since(later);
        assert!(tenth < Duration::from_millis(14_000), "{tenth:?}");
    }

    #[test]
    fn retry_after_follows_the_queue() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(config(2));
        assert!(state.try_take(t0) && state.try_take(t0));
        state.release(t0, t0, false);
        state.release(t0, t0, false);
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

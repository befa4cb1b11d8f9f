//! The budget every worker (and, with Redis, every replica) takes upstream slots from.
//!
//! Calls that find no slot wait in the schedule (`schedule`): tasks nothing is known about first,
//! fair across callers, then refreshes, the stalest first; a call nobody wants any more leaves it
//! without a slot. One dispatcher task hands out slots as they free up. A full schedule refuses
//! with a `Retry-After` computed from the queue as it is. The window itself is `window::BudgetState`, wrapped here with
//! a lock, the queue's channels and the dispatcher; with Redis, slots come from the shared budget
//! while Redis is healthy and from a local share while it is not.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::fair_queue::QueueKey;
use super::interest::{Interest, Priority};
use super::schedule::{Next, Schedule};
use super::window::{BudgetConfig, BudgetState, RECOVERY_STEP};
use crate::shared::budget::{Take as SharedTake, TakeFor};
use crate::shared::{Mode, Redis, SharedBudget};
use crate::support::{ceil_secs, lock, Clock};
use crate::task::CallerName;
use crate::telemetry::{BudgetRejection, Metrics, ScheduleClass};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub reason: BudgetRejection,
    /// Whole seconds until a newcomer would likely get a slot (at least 1).
    pub retry_after_secs: u64,
}

/// What a fetch asks the budget for.
pub(crate) struct SlotAsk {
    /// Whose queue an unknown task waits in.
    pub caller: Option<CallerName>,
    pub priority: Priority,
    /// Until when anyone wants the call; every lookup of the task extends it.
    pub interest: Arc<Interest>,
    /// The fetch's own deadline: never waited past.
    pub deadline: Instant,
}

struct Waiter {
    grant: oneshot::Sender<Permit>,
}

/// What the lock guards: the window and the schedule, always changed together.
struct WindowAndQueue {
    state: BudgetState,
    queue: Schedule<Waiter>,
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
pub(crate) struct Budget {
    locked: Mutex<WindowAndQueue>,
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
pub(crate) struct Permit {
    budget: Arc<Budget>,
    slot: Option<Slot>,
    /// When the slot was handed out: the call is sent right after.
    taken_at: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = self.budget.clock.now();
        match self.slot.take() {
            Some(Slot::Local) | None => self.budget.lock().state.release(now, self.taken_at),
            Some(Slot::Shared(member)) => {
                let budget = Arc::clone(&self.budget);
                // As locally: a window after the answer, and a window plus the margin after the send.
                let margin_left =
                    (self.taken_at + budget.config.margin).saturating_duration_since(now);
                let cool = budget.config.window + margin_left;
                tokio::spawn(async move {
                    if let Some((redis, scripts)) = &budget.redis {
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
    pub(crate) fn start(
        config: BudgetConfig,
        attempt_timeout: Duration,
        redis: Option<Arc<Redis>>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let budget = Arc::new(Self {
            locked: Mutex::new(WindowAndQueue {
                state: BudgetState::new(config),
                queue: Schedule::default(),
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

    fn lock(&self) -> MutexGuard<'_, WindowAndQueue> {
        lock(&self.locked)
    }

    /// One try at a slot for a call of `priority`, from whichever budget is in force now;
    /// `unknown_waiting` is how many unknown tasks wait here, this call included if it is one.
    async fn try_take(&self, now: Instant, priority: Priority, unknown_waiting: usize) -> Take {
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
                let purpose = TakeFor {
                    refresh: matches!(priority, Priority::Refresh { .. }),
                    unknown_waiting,
                };
                match scripts.take(redis, limit, hold, purpose).await {
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
        let mut locked = self.lock();
        if locked.state.try_take_capped(now, cap) {
            Take::Granted(Slot::Local)
        } else {
            let at = locked
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
            taken_at: self.clock.now(),
        }
    }

    /// A slot went to a call of `priority`: counted by class, a refresh by how stale it was.
    fn granted(&self, priority: Priority, now: Instant) {
        self.metrics.record_scheduled(priority_class(priority));
        if let Priority::Refresh { fetched_at } = priority {
            self.metrics
                .refresh_lag
                .observe(now.saturating_duration_since(fetched_at).as_secs_f64());
        }
    }

    /// Hands free slots to the schedule's next calls; returns when to look again.
    async fn dispatch(self: &Arc<Self>) -> Option<Instant> {
        loop {
            let now = self.clock.now();
            let next = {
                let locked = self.lock();
                self.publish_gauges(&locked, now);
                locked
                    .queue
                    .next_priority()
                    .map(|priority| (priority, locked.queue.unknown_len()))
            };
            let Some((priority, unknown)) = next else {
                // Still wake for recovery so the effective-rate gauge stays truthful.
                let recovering = self.lock().state.effective_limit(now) < self.config.limit;
                return recovering.then(|| now + RECOVERY_STEP);
            };
            match self.try_take(now, priority, unknown).await {
                Take::Granted(slot) => self.hand_out(self.permit(slot), now),
                Take::WaitUntil(at) if at <= now => tokio::task::yield_now().await,
                Take::WaitUntil(at) => return Some(at),
            }
        }
    }

    /// Gives `permit` to the next call that still wants it. Calls nobody wants, and lookups that
    /// gave up just now, pass it on; with nobody left, the slot is released unused.
    fn hand_out(&self, mut permit: Permit, now: Instant) {
        loop {
            let next = self.lock().queue.pop(now);
            match next {
                Some(Next::Call(waiter, priority)) => match waiter.grant.send(permit) {
                    Ok(()) => {
                        self.granted(priority, now);
                        return;
                    }
                    Err(returned) => permit = returned,
                },
                // Dropping the waiter tells its lookup that nobody wants the call any more.
                Some(Next::Unwanted(_, priority)) => {
                    self.metrics.record_unwanted(priority_class(priority));
                }
                None => return,
            }
        }
    }

    fn publish_gauges(&self, locked: &WindowAndQueue, now: Instant) {
        self.metrics
            .budget_queue_depth
            .set(locked.queue.len() as i64);
        self.metrics
            .budget_slots_used
            .set(locked.state.used_at(now) as i64);
        self.metrics
            .budget_effective_rate
            .set(f64::from(locked.state.effective_limit(now)));
    }

    /// `Retry-After` for a newcomer at `position` in the queue.
    fn retry_after_secs_at(
        &self,
        locked: &mut WindowAndQueue,
        now: Instant,
        position: usize,
    ) -> u64 {
        match (&self.redis, locked.shared_free_at) {
            (Some((redis, _)), Some(free_at)) if redis.mode(now) == Mode::Shared => {
                let limit = locked.state.effective_limit(now).max(1) as usize;
                let round = self.config.window + self.config.margin;
                let at = free_at.max(now) + round * (position / limit) as u32;
                ceil_secs(at.saturating_duration_since(now)).max(1)
            }
            _ => locked.state.retry_after_secs(now, position),
        }
    }

    /// Waits for a slot in the schedule for as long as anyone wants the call (and at most until
    /// the fetch's deadline). `on_queued` is told, once, when the call has to wait and for about
    /// how long.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        ask: SlotAsk,
        on_queued: impl FnOnce(Refusal),
    ) -> Result<Permit, Refusal> {
        let key: QueueKey = ask.caller.clone().unwrap_or_else(|| Arc::from(""));
        let now = self.clock.now();
        if self.lock().queue.is_empty() {
            let unknown = usize::from(ask.priority == Priority::Unknown);
            if let Take::Granted(slot) = self.try_take(now, ask.priority, unknown).await {
                self.metrics.budget_wait.observe(0.0);
                self.granted(ask.priority, now);
                return Ok(self.permit(slot));
            }
        }
        let (id, mut grant) = {
            let mut locked = self.lock();
            let mut pushed_out = None;
            if locked.queue.len() >= self.config.max_queue {
                pushed_out = locked.queue.make_room_for(&key, ask.priority);
                if pushed_out.is_none() {
                    let position = locked.queue.position_for(ask.priority);
                    let retry_after_secs = self.retry_after_secs_at(&mut locked, now, position);
                    drop(locked);
                    return Err(self.refuse(BudgetRejection::QueueFull, retry_after_secs));
                }
            }
            // Its sender dropped, the pushed-out waiter hears "queue full" (outside the lock).
            drop(pushed_out);
            let position = locked.queue.position_for(ask.priority);
            let (tx, rx) = oneshot::channel();
            let id = locked.next_waiter_id;
            locked.next_waiter_id += 1;
            let interest = Arc::clone(&ask.interest);
            let waiter = Waiter { grant: tx };
            // A caller who can wait longer than a plain request (a long poll's first lookup)
            // lets those who cannot go first, until its own wait is nearly over.
            let urgent_at = ask
                .interest
                .wanted_until()
                .min(ask.deadline)
                .checked_sub(self.config.max_queue_wait)
                .filter(|at| *at > now);
            match (ask.priority, urgent_at) {
                (Priority::Unknown, Some(at)) => {
                    locked.queue.push_patient(key, id, at, interest, waiter)
                }
                _ => locked.queue.push(key, id, ask.priority, interest, waiter),
            }
            self.metrics
                .budget_queue_depth
                .set(locked.queue.len() as i64);
            on_queued(Refusal {
                reason: BudgetRejection::WaitTimeout,
                retry_after_secs: self.retry_after_secs_at(&mut locked, now, position),
            });
            (id, rx)
        };
        self.wake.notify_one();

        let queued_at = now;
        loop {
            let give_up_at = ask.interest.wanted_until().min(ask.deadline);
            let outcome = tokio::time::timeout_at(give_up_at, &mut grant).await;
            let now = self.clock.now();
            let waited = now.saturating_duration_since(queued_at);
            match outcome {
                Ok(Ok(permit)) => {
                    self.metrics.budget_wait.observe(waited.as_secs_f64());
                    return Ok(permit);
                }
                // Passed over as unwanted, or pushed out of a full schedule.
                Ok(Err(_)) => return Err(self.gave_up(&ask, now, false)),
                // Someone asked again meanwhile: still wanted, keep the place.
                Err(_) if ask.interest.is_wanted(now) && now < ask.deadline => continue,
                Err(_) => {
                    let removed = self.lock().queue.remove(id);
                    if removed {
                        return Err(self.gave_up(&ask, now, true));
                    }
                    // Granted just as the wait ended: the permit is in the channel.
                    return match grant.try_recv() {
                        Ok(permit) => Ok(permit),
                        Err(_) => Err(self.gave_up(&ask, now, false)),
                    };
                }
            }
        }
    }

    /// The refusal of a call that left the schedule without a slot. An unknown task left because
    /// its callers' waits ended (they were answered 503); a refresh because nobody asked for it
    /// any more (its callers had their answer already); otherwise it was pushed out.
    fn gave_up(&self, ask: &SlotAsk, now: Instant, waited_out: bool) -> Refusal {
        let mut locked = self.lock();
        self.metrics
            .budget_queue_depth
            .set(locked.queue.len() as i64);
        let position = locked.queue.position_for(ask.priority);
        let retry_after_secs = self.retry_after_secs_at(&mut locked, now, position);
        drop(locked);
        let unwanted = !ask.interest.is_wanted(now) || now >= ask.deadline;
        match (ask.priority, unwanted || waited_out) {
            (Priority::Refresh { .. }, true) => {
                if waited_out {
                    self.metrics.record_unwanted(priority_class(ask.priority));
                }
                Refusal {
                    reason: BudgetRejection::WaitTimeout,
                    retry_after_secs,
                }
            }
            (Priority::Unknown, true) => {
                self.refuse(BudgetRejection::WaitTimeout, retry_after_secs)
            }
            (_, false) => self.refuse(BudgetRejection::QueueFull, retry_after_secs),
        }
    }

    /// `Retry-After` for a newcomer of `priority`, from the schedule as it is now.
    pub(crate) fn retry_after_secs(&self, priority: Priority) -> u64 {
        let now = self.clock.now();
        let mut locked = self.lock();
        let position = locked.queue.position_for(priority);
        self.retry_after_secs_at(&mut locked, now, position)
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
    pub(crate) fn throttled(&self) {
        let now = self.clock.now();
        let limit = {
            let mut locked = self.lock();
            locked.state.throttled(now);
            locked.state.effective_limit(now)
        };
        self.metrics.budget_effective_rate.set(f64::from(limit));
        self.wake.notify_one();
    }
}

fn priority_class(priority: Priority) -> ScheduleClass {
    match priority {
        Priority::Unknown => ScheduleClass::Unknown,
        Priority::Refresh { .. } => ScheduleClass::Refresh,
    }
}

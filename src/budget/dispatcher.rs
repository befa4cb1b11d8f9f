//! The budget every worker (and, with Redis, every replica) takes upstream slots from.
//!
//! Calls that find no slot wait in the schedule (`schedule`): tasks nothing is known about first,
//! fair across callers, then refreshes, the stalest first; a call nobody wants any more leaves it
//! without a slot. One dispatcher task hands out slots as they free up. A full schedule refuses
//! with a `Retry-After` computed from the queue as it is; a caller whose wait ends is told when
//! its call's place comes, and the call keeps that place until it is back (`acquire`, in
//! `dispatcher/acquire.rs`). The window itself is `window::BudgetState`, wrapped here with a
//! lock, the queue's channels and the dispatcher; with Redis, the window's cap is the lease this
//! replica holds (`lease_keeper`), so a slot never waits on a Redis round trip.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::interest::{Interest, Priority};
use super::lease_keeper::LeaseKeeper;
use super::schedule::{Next, Schedule};
use super::window::{BudgetConfig, BudgetState, RECOVERY_STEP};
use crate::shared::{Demand, LeaseTerms, Redis};
use crate::support::{lock, Clock};
use crate::task::CallerName;
use crate::telemetry::{BudgetRejection, Metrics, ScheduleClass};
use crate::upstream::ConnectionsOpened;

mod acquire;

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
    /// The fetch's deadline as it started: never waited past, except by a call kept for callers
    /// sent away, which waits as long as they are expected back.
    pub deadline: Instant,
}

pub(super) struct Waiter {
    grant: oneshot::Sender<Permit>,
}

/// What the lock guards: the window and the schedule, always changed together.
pub(super) struct WindowAndQueue {
    pub(super) state: BudgetState,
    pub(super) queue: Schedule<Waiter>,
    next_waiter_id: u64,
}

/// The answer of one attempt to take a slot.
enum Take {
    Granted,
    /// Nothing before this instant (or before a wake-up).
    WaitUntil(Instant),
}

/// The budget shared by every worker (and, with Redis, by every replica).
pub(crate) struct Budget {
    locked: Mutex<WindowAndQueue>,
    wake: Arc<Notify>,
    pub(super) config: BudgetConfig,
    /// In shared mode, the lease that caps the window.
    pub(super) lease: Option<Arc<LeaseKeeper>>,
    pub(super) clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Upstream connections opened so far (a call meanwhile holds its slot its whole answer time).
    connections: Arc<ConnectionsOpened>,
}

/// A slot for one upstream call. Dropping it (when the answer has arrived, or the call failed)
/// starts the slot's cooling window.
pub(crate) struct Permit {
    budget: Arc<Budget>,
    /// When the slot was handed out: the call is sent right after.
    taken_at: Instant,
    /// Upstream connections opened before it: one opened while the call is in flight may be
    /// its own, which delays its arrival by a handshake.
    connections_before: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = self.budget.clock.now();
        let opened = self.budget.connections.so_far() != self.connections_before;
        self.budget.lock().state.release(now, self.taken_at, opened);
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
    /// Builds the budget and starts its dispatcher on the current runtime. With `redis`, the
    /// window runs inside a lease of the shared budget, renewed by a keeper task.
    pub(crate) fn start(
        config: BudgetConfig,
        redis: Option<(Arc<Redis>, LeaseTerms)>,
        connections: Arc<ConnectionsOpened>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let lease = redis.map(|(redis, terms)| {
            Arc::new(LeaseKeeper::new(
                redis,
                terms,
                Arc::clone(&metrics),
                Arc::clone(&clock),
            ))
        });
        let budget = Arc::new(Self {
            locked: Mutex::new(WindowAndQueue {
                state: BudgetState::new(config),
                queue: Schedule::default(),
                next_waiter_id: 0,
            }),
            wake: Arc::new(Notify::new()),
            config,
            lease: lease.clone(),
            clock,
            metrics,
            connections,
        });
        if let Some(keeper) = lease {
            let (weak, wake) = (Arc::downgrade(&budget), Arc::clone(&budget.wake));
            tokio::spawn(keeper.run(
                move |now, keeper| weak.upgrade().map(|budget| budget.demand(now, keeper)),
                move || wake.notify_one(),
            ));
        }
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

    pub(super) fn lock(&self) -> MutexGuard<'_, WindowAndQueue> {
        lock(&self.locked)
    }

    /// One try at a slot for a call of `priority`: under the lease's cap in shared mode.
    fn try_take(&self, now: Instant, priority: Priority) -> Take {
        let Some(lease) = &self.lease else {
            return self.try_take_local(now, None);
        };
        let cap = lease.cap(now, matches!(priority, Priority::Refresh { .. }));
        match self.try_take_local(now, Some(cap)) {
            Take::Granted => Take::Granted,
            Take::WaitUntil(at) => {
                lease.want_more();
                Take::WaitUntil(at.min(lease.next_change(now)))
            }
        }
    }

    /// What this replica tells the shared budget it wants, at `now`.
    fn demand(&self, now: Instant, lease: &LeaseKeeper) -> Demand {
        let mut locked = self.lock();
        let held = locked.state.used(now) as u32;
        let waiting = u32::try_from(locked.queue.len()).unwrap_or(u32::MAX);
        Demand {
            unknown: u32::try_from(locked.queue.unknown_len()).unwrap_or(u32::MAX),
            total: held.saturating_add(waiting),
            applying: lease.cap(now, false),
            safe: lease.safe_at(now),
            held,
            throttled: false,
        }
    }

    fn try_take_local(&self, now: Instant, cap: Option<u32>) -> Take {
        let mut locked = self.lock();
        if locked.state.try_take_capped(now, cap) {
            Take::Granted
        } else {
            let at = locked
                .state
                .next_free_at(now, cap)
                .unwrap_or(now + self.config.window);
            Take::WaitUntil(at.max(now))
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            budget: Arc::clone(self),
            taken_at: self.clock.now(),
            connections_before: self.connections.so_far(),
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
                locked.queue.next_priority()
            };
            let Some(priority) = next else {
                // Still wake for recovery so the effective-rate gauge stays truthful.
                let recovering = self.lock().state.effective_limit(now) < self.config.limit;
                return recovering.then(|| now + RECOVERY_STEP);
            };
            match self.try_take(now, priority) {
                Take::Granted => self.hand_out(self.permit(), now),
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
            .set(f64::from(self.effective_limit(locked, now)));
    }

    /// The limit in force: the local one (lowered after throttling), and in shared mode the
    /// shared one too.
    fn effective_limit(&self, locked: &WindowAndQueue, now: Instant) -> u32 {
        let local = locked.state.effective_limit(now);
        let shared = self.lease.as_ref().and_then(|lease| lease.shared_limit());
        shared.map_or(local, |shared| shared.min(local))
    }

    fn refuse(&self, reason: BudgetRejection, retry_after_secs: u64) -> Refusal {
        self.count_refusal(reason);
        Refusal {
            reason,
            retry_after_secs,
        }
    }

    fn count_refusal(&self, reason: BudgetRejection) {
        self.metrics
            .budget_rejections
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Tencent answered `RequestLimitExceeded`.
    pub(crate) fn throttled(&self) {
        let now = self.clock.now();
        let limit = {
            let mut locked = self.lock();
            locked.state.throttled(now);
            self.effective_limit(&locked, now)
        };
        self.metrics.budget_effective_rate.set(f64::from(limit));
        if let Some(lease) = &self.lease {
            lease.throttled();
        }
        self.wake.notify_one();
    }

    /// On shutdown, after the drain: gives the lease back so the others may use it.
    pub(crate) async fn leave(&self) {
        if let Some(lease) = &self.lease {
            let now = self.clock.now();
            let (held, until) = {
                let mut locked = self.lock();
                (locked.state.used(now) as u32, locked.state.held_until(now))
            };
            let held_for = until.map(|at| at.saturating_duration_since(now));
            lease.leave(held, held_for).await;
        }
    }
}

fn priority_class(priority: Priority) -> ScheduleClass {
    match priority {
        Priority::Unknown => ScheduleClass::Unknown,
        Priority::Refresh { .. } => ScheduleClass::Refresh,
    }
}

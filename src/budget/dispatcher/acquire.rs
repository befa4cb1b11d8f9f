//! A call's wait for a slot (`Budget::acquire`): queued in the schedule as long as anyone wants
//! it; for a task nothing is known about, kept for the callers it sends away (`kept`) until they
//! are expected back, and told to them as a `Retry-After` from where it stands (`Place`).

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{priority_class, Budget, Permit, Refusal, SlotAsk, Take, Waiter};
use crate::budget::fair_queue::QueueKey;
use crate::budget::interest::Priority;
use crate::budget::kept::Keeping;
use crate::budget::place::Place;
use crate::support::retry_after_left;
use crate::telemetry::{BudgetRejection, ScheduleClass};

impl Budget {
    /// Waits for a slot in the schedule for as long as anyone wants the call (and at most until
    /// the fetch's deadline). `on_queued` is told, once, when the call has to wait, for about
    /// how long, and where it waits.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        ask: SlotAsk,
        on_queued: impl FnOnce(Refusal, Place),
    ) -> Result<Permit, Refusal> {
        let key: QueueKey = ask.caller.clone().unwrap_or_else(|| Arc::from(""));
        let now = self.clock.now();
        if self.lock().queue.is_empty() {
            if let Take::Granted = self.try_take(now, ask.priority) {
                self.metrics.budget_wait.observe(0.0);
                self.granted(ask.priority, now);
                return Ok(self.permit());
            }
        }
        let (id, mut grant, told_secs) = {
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
            let told_secs = self.retry_after_secs_at(&mut locked, now, position);
            on_queued(
                Refusal {
                    reason: BudgetRejection::WaitTimeout,
                    retry_after_secs: told_secs,
                },
                Place::new(Arc::downgrade(self), id),
            );
            (id, rx, told_secs)
        };
        self.wake.notify_one();

        let queued_at = now;
        // An unknown task's call is kept for the callers it sends away (`kept`).
        let mut keeping = (ask.priority == Priority::Unknown)
            .then(|| Keeping::start(&ask.interest, told_secs, now, self.config.max_queue_wait));
        loop {
            // A call kept for callers sent away waits as long as they are expected back, past
            // the deadline its fetch started with (which could not know how long the queue
            // ahead would take: see `LookupContext::deadline_now`).
            let deadline = match keeping {
                Some(_) => ask.deadline.max(ask.interest.wanted_until()),
                None => ask.deadline,
            };
            let asked_until = ask.interest.asked_until();
            let wake = if keeping.is_some() && self.clock.now() < asked_until {
                // Wake when the callers are sent away, to make way for those still waiting.
                asked_until
            } else {
                ask.interest.wanted_until()
            };
            let outcome = tokio::time::timeout_at(wake.min(deadline), &mut grant).await;
            let now = self.clock.now();
            match outcome {
                Ok(Ok(permit)) => {
                    let waited = now.saturating_duration_since(queued_at);
                    self.metrics.budget_wait.observe(waited.as_secs_f64());
                    return Ok(permit);
                }
                // Passed over as unwanted, or pushed out of a full schedule.
                Ok(Err(_)) => return Err(self.gave_up(&ask, now, Left::PassedOver)),
                Err(_) => {}
            }
            if now < deadline {
                // No caller waits on the unknown task any more: they were sent away.
                let sent_away = now >= ask.interest.asked_until();
                if let Some(keeping) = keeping.as_mut().filter(|_| sent_away) {
                    // What its callers are told now (`Place`): from where the call stands.
                    let told_now = self.retry_after_for(id);
                    if keeping.sent_away(&ask.interest, now, told_now) {
                        self.count_refusal(BudgetRejection::WaitTimeout);
                    }
                    if ask.interest.is_wanted(now) {
                        self.lock().queue.send_away(id);
                        continue;
                    }
                    return self.leave_unmade(id, &mut grant, &ask, now, keeping);
                }
                // Someone asked again meanwhile: still wanted, keep the place.
                if ask.interest.is_wanted(now) {
                    continue;
                }
            }
            // Its deadline came, or nobody wants it.
            if let Some(keeping) = keeping.as_ref().filter(|k| k.was_sent_away()) {
                return self.leave_unmade(id, &mut grant, &ask, now, keeping);
            }
            if self.lock().queue.remove(id) {
                let waited = now.saturating_duration_since(queued_at);
                let retry_after_secs = retry_after_left(told_secs, waited);
                return Err(self.gave_up(&ask, now, Left::WaitedOut { retry_after_secs }));
            }
            return self.granted_meanwhile(&mut grant, &ask, now);
        }
    }

    /// A call kept for callers who did not come back (or whose deadline came while kept) leaves
    /// unmade: nobody is refused now.
    fn leave_unmade(
        &self,
        id: u64,
        grant: &mut oneshot::Receiver<Permit>,
        ask: &SlotAsk,
        now: Instant,
        keeping: &Keeping,
    ) -> Result<Permit, Refusal> {
        if !self.lock().queue.remove(id) {
            return self.granted_meanwhile(grant, ask, now);
        }
        self.metrics.record_unwanted(ScheduleClass::Unknown);
        Err(Refusal {
            reason: BudgetRejection::WaitTimeout,
            retry_after_secs: keeping.retry_after_left(now),
        })
    }

    /// The wait ended just as the call was granted: the permit is in the channel, or the call
    /// was passed over.
    fn granted_meanwhile(
        &self,
        grant: &mut oneshot::Receiver<Permit>,
        ask: &SlotAsk,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        match grant.try_recv() {
            Ok(permit) => Ok(permit),
            Err(_) => Err(self.gave_up(ask, now, Left::PassedOver)),
        }
    }

    /// The refusal of a call that left the schedule without a slot. An unknown task left because
    /// its callers' waits ended (they were answered 503); a refresh because nobody asked for it
    /// any more (its callers had their answer already); otherwise it was pushed out.
    ///
    /// A call that waited out its turn says what is left of the `Retry-After` its callers were
    /// told when it queued: its place was near the front by then, and the wait of a newcomer at
    /// the back (a whole queue's worth) would keep them away long after their turn.
    fn gave_up(&self, ask: &SlotAsk, now: Instant, left: Left) -> Refusal {
        let mut locked = self.lock();
        self.metrics
            .budget_queue_depth
            .set(locked.queue.len() as i64);
        let (retry_after_secs, waited_out) = match left {
            Left::WaitedOut { retry_after_secs } => (retry_after_secs, true),
            Left::PassedOver => {
                let position = locked.queue.position_for(ask.priority);
                (self.retry_after_secs_at(&mut locked, now, position), false)
            }
        };
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
}

/// How a queued call left the schedule without a slot.
enum Left {
    /// Its wait ended (nobody wanted it any more, or its deadline came); what is left of the
    /// `Retry-After` its callers were told when it queued.
    WaitedOut { retry_after_secs: u64 },
    /// Passed over as unwanted, or pushed out of a full schedule.
    PassedOver,
}

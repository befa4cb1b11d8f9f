//! The schedule: who gets the next upstream slot. Pure (every method that judges interest takes
//! `now`), so its choices are tested with a controlled clock.
//!
//! 1. Tasks nothing is known about, with a caller blocked on them: in arrival order, one FIFO per
//!    caller served round-robin (`fair_queue`), so a noisy caller cannot starve the others. A
//!    caller who can wait (a long poll's first lookup, which waits as long as its `wait`) queues
//!    behind those who cannot (a plain request gives up after the queue wait) until its own wait
//!    is nearly over: earliest deadline first, in two tiers, so that a new task asked in the
//!    middle of a wave of long polls is answered at once and no long poll waits past its end.
//!    Behind both, in the order they arrived: unknown tasks whose callers were answered
//!    503 with a `Retry-After`. The call keeps its place while they wait it out, so their answer
//!    is there when they come back and the budget goes to it rather than to a refresh meanwhile;
//!    a task with a caller still blocked on it goes first.
//! 2. Refreshes of processing tasks that someone still wants, the stalest answer first.
//! 3. Never a call nobody wants: an entry whose interest has lapsed leaves without a slot.
//!
//! A full schedule makes room for a newcomer by pushing out a refresh (the freshest) before it
//! pushes out a caller's newest unknown task.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use super::fair_queue::{FairQueue, QueueKey};
use super::interest::{Interest, Priority};

struct Entry<T> {
    item: T,
    interest: Arc<Interest>,
}

pub(super) struct Schedule<T> {
    /// Unknown tasks whose callers give up soon.
    unknown: FairQueue<Entry<T>>,
    /// Unknown tasks whose callers can wait, each until it turns urgent (`patient_due`).
    patient: FairQueue<Entry<T>>,
    /// When each patient entry joins `unknown`, by (instant, id). A mark outlives an entry taken
    /// out early only until it comes due.
    patient_due: BTreeMap<(Instant, u64), ()>,
    /// Unknown tasks whose callers were sent away with a `Retry-After`, in arrival order.
    away: FairQueue<Entry<T>>,
    /// Refreshes by (fetched_at, id): the stalest first, ties in arrival order.
    refresh: BTreeMap<(Instant, u64), Entry<T>>,
    /// Where each queued refresh is, to take it out by id.
    refresh_keys: HashMap<u64, Instant>,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Self {
            unknown: FairQueue::default(),
            patient: FairQueue::default(),
            patient_due: BTreeMap::new(),
            away: FairQueue::default(),
            refresh: BTreeMap::new(),
            refresh_keys: HashMap::new(),
        }
    }
}

/// What left the schedule: the next call to make, or one that nobody wanted any more.
pub(super) enum Next<T> {
    Call(T, Priority),
    Unwanted(T, Priority),
}

impl<T> Schedule<T> {
    pub(super) fn len(&self) -> usize {
        self.unknown_len() + self.refresh.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn unknown_len(&self) -> usize {
        self.unknown.len() + self.patient.len() + self.away.len()
    }

    /// The queue position a newcomer of `priority` would take (0 = next); an unknown task is
    /// placed as one whose caller cannot wait.
    pub(super) fn position_for(&self, priority: Priority) -> usize {
        match priority {
            Priority::Unknown => self.unknown.len(),
            Priority::Refresh { fetched_at } => {
                self.unknown_len() + self.refresh.range(..(fetched_at, u64::MAX)).count()
            }
        }
    }

    /// How many calls go before the queued entry `id`, if it is still queued: for the
    /// `Retry-After` of callers sent away, read from the schedule as it is when they are answered.
    ///
    /// A task whose callers are being sent away (its entry away, or blocked with its callers'
    /// waits ending before `soon`) ends up behind every task still blocked then, but only the
    /// tasks whose callers will still be waiting count as ahead of it: the rest of a burst whose
    /// waits end together is sent away too, and queues behind it in arrival order.
    pub(super) fn position_of(&self, id: u64, soon: Instant) -> Option<usize> {
        if let Some(fetched_at) = self.refresh_keys.get(&id) {
            return Some(self.unknown_len() + self.refresh.range(..(*fetched_at, id)).count());
        }
        let leaving = |entry: &Entry<T>| entry.interest.asked_until() <= soon;
        let going_away =
            self.away.find(id).is_some() || self.unknown.find(id).is_some_and(&leaving);
        if !going_away {
            return self
                .unknown
                .position_of(id)
                .or_else(|| Some(self.unknown.len() + self.patient.position_of(id)?));
        }
        let blocked_ahead = self
            .unknown
            .count(|queued, entry| queued < id || !leaving(entry));
        let away_ahead = self.away.count(|queued, _| queued < id);
        Some(blocked_ahead + self.patient.len() + away_ahead)
    }

    /// Queues an unknown task whose caller can wait: it goes behind the unknown tasks of callers
    /// who cannot until `urgent_at` (its caller's deadline less the time a call needs to be
    /// made), then joins them.
    pub(super) fn push_patient(
        &mut self,
        key: QueueKey,
        id: u64,
        urgent_at: Instant,
        interest: Arc<Interest>,
        item: T,
    ) {
        self.patient.push(key, id, Entry { item, interest });
        self.patient_due.insert((urgent_at, id), ());
    }

    /// An unknown task whose callers were sent away with a `Retry-After` keeps its place
    /// behind every task with a caller still blocked (and before every refresh) until it is
    /// called or nobody wants it. Returns whether it was queued as an unknown task with a caller
    /// blocked or patient on it.
    pub(super) fn send_away(&mut self, id: u64) -> bool {
        // A patient entry's due mark stays behind; it finds nothing to promote when it comes due.
        let Some((key, entry)) = self.unknown.take(id).or_else(|| self.patient.take(id)) else {
            return false;
        };
        // In arrival order, not the order the callers' waits ended in: those end together for
        // a burst of callers (timers of one instant fire in no set order), and the `Retry-After`
        // each was told counted on the place its arrival gave it.
        self.away.push_in_order(key, id, entry);
        true
    }

    /// Patient entries whose time has come join the urgent ones (at the back of their caller's
    /// queue).
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.patient_due.first_entry() {
            let (due, id) = *entry.key();
            if due > now {
                return;
            }
            entry.remove();
            if let Some((key, item)) = self.patient.take(id) {
                self.unknown.push(key, id, item);
            }
        }
    }

    pub(super) fn push(
        &mut self,
        key: QueueKey,
        id: u64,
        priority: Priority,
        interest: Arc<Interest>,
        item: T,
    ) {
        let entry = Entry { item, interest };
        match priority {
            Priority::Unknown => self.unknown.push(key, id, entry),
            Priority::Refresh { fetched_at } => {
                self.refresh.insert((fetched_at, id), entry);
                self.refresh_keys.insert(id, fetched_at);
            }
        }
    }

    /// The class the next call would come from, if any.
    pub(super) fn next_priority(&self) -> Option<Priority> {
        if self.unknown_len() > 0 {
            return Some(Priority::Unknown);
        }
        self.refresh
            .keys()
            .next()
            .map(|(fetched_at, _)| Priority::Refresh {
                fetched_at: *fetched_at,
            })
    }

    /// Takes the next entry out: the head of the unknown tasks, else the stalest refresh. An
    /// entry nobody wants any more comes out as `Unwanted`, so its slot goes to the next one.
    pub(super) fn pop(&mut self, now: Instant) -> Option<Next<T>> {
        self.promote_due(now);
        if let Some(entry) = self
            .unknown
            .pop()
            .or_else(|| self.patient.pop())
            .or_else(|| self.away.pop())
        {
            return Some(judge(entry, Priority::Unknown, now));
        }
        let ((fetched_at, id), entry) = self.refresh.pop_first()?;
        self.refresh_keys.remove(&id);
        Some(judge(entry, Priority::Refresh { fetched_at }, now))
    }

    /// Takes an entry out by id (its lookup gave up); true if it was still queued.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        if let Some(fetched_at) = self.refresh_keys.remove(&id) {
            return self.refresh.remove(&(fetched_at, id)).is_some();
        }
        // A patient entry's due mark stays behind; it finds nothing to promote when it comes due.
        self.unknown.remove(id) || self.patient.remove(id) || self.away.remove(id)
    }

    /// Makes room for a newcomer of `priority` from `key` when the schedule is full: pushes out
    /// the freshest refresh if the newcomer is worth more, else (for an unknown task) the newest
    /// waiter of the busiest other caller, as the fair queue decides. Returns what was pushed out.
    pub(super) fn make_room_for(&mut self, key: &QueueKey, priority: Priority) -> Option<T> {
        let freshest = self.refresh.keys().next_back().copied();
        let worth_more = match (priority, freshest) {
            (_, None) => false,
            (Priority::Unknown, Some(_)) => true,
            (Priority::Refresh { fetched_at }, Some((newest, _))) => fetched_at < newest,
        };
        if worth_more {
            let (at, id) = freshest.expect("checked above");
            self.refresh_keys.remove(&id);
            return self.refresh.remove(&(at, id)).map(|entry| entry.item);
        }
        match priority {
            // A task whose callers were sent away goes before one whose caller is blocked.
            Priority::Unknown => self
                .away
                .pop_newest_of_busiest()
                .or_else(|| self.unknown.make_room_for(key))
                .or_else(|| self.patient.make_room_for(key))
                .map(|entry| entry.item),
            Priority::Refresh { .. } => None,
        }
    }
}

fn judge<T>(entry: Entry<T>, priority: Priority, now: Instant) -> Next<T> {
    if entry.interest.is_wanted(now) {
        Next::Call(entry.item, priority)
    } else {
        Next::Unwanted(entry.item, priority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(name: &str) -> QueueKey {
        Arc::from(name)
    }

    fn wanted_until(at: Instant) -> Arc<Interest> {
        Arc::new(Interest::until(at))
    }

    fn drain(schedule: &mut Schedule<&'static str>, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| schedule.pop(now))
            .map(|next| match next {
                Next::Call(item, _) => item.to_string(),
                Next::Unwanted(item, _) => format!("({item})"),
            })
            .collect()
    }

    #[test]
    fn a_task_whose_callers_were_sent_away_keeps_its_place_behind_blocked_callers() {
        let t0 = Instant::now();
        let wanted = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        for (id, item) in [(1, "sent away"), (2, "second"), (3, "also sent away")] {
            schedule.push(key("a"), id, Priority::Unknown, Arc::clone(&wanted), item);
        }
        let refresh = Priority::Refresh { fetched_at: t0 };
        schedule.push(key("a"), 4, refresh, Arc::clone(&wanted), "refresh");
        // Their callers' waits ended in the other order (timers of one instant fire in any).
        assert!(schedule.send_away(3) && schedule.send_away(1));
        assert!(!schedule.send_away(4), "only unknown tasks are sent away");
        let patient_until = t0 + Duration::from_secs(30);
        schedule.push_patient(key("b"), 5, patient_until, Arc::clone(&wanted), "patient");
        schedule.push(
            key("c"),
            6,
            Priority::Unknown,
            Arc::clone(&wanted),
            "blocked",
        );
        assert_eq!(schedule.position_for(Priority::Unknown), 2);
        let positions = [2, 6, 5, 1, 3, 4].map(|id| schedule.position_of(id, t0));
        assert_eq!(
            positions,
            [0, 1, 2, 3, 4, 5].map(Some),
            "each knows its place"
        );
        // Behind the tasks whose callers are blocked or patient, in arrival order, still before
        // every refresh; and never promoted by time.
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            drain(&mut schedule, later),
            [
                "second",
                "blocked",
                "patient",
                "sent away",
                "also sent away",
                "refresh"
            ]
        );
    }

    #[test]
    fn a_burst_sent_away_together_is_told_its_places_in_arrival_order() {
        let t0 = Instant::now();
        let leaving = wanted_until(t0 + Duration::from_millis(10));
        let staying = wanted_until(t0 + Duration::from_secs(2));
        let mut schedule = Schedule::default();
        for id in 1..=4 {
            schedule.push(
                key("a"),
                id,
                Priority::Unknown,
                Arc::clone(&leaving),
                "burst",
            );
        }
        // A new task whose caller has just come and waits on.
        schedule.push(key("a"), 5, Priority::Unknown, staying, "new");
        // The callers of 1-4 are being sent away together, 3 and 1 first.
        assert!(schedule.send_away(3) && schedule.send_away(1));
        let soon = t0 + Duration::from_secs(1);
        // Each behind the new task and the burst's earlier arrivals, wherever it is this moment.
        let positions = [1, 2, 3, 4].map(|id| schedule.position_of(id, soon));
        assert_eq!(positions, [1, 2, 3, 4].map(Some));
    }

    #[test]
    fn a_long_poll_sent_away_keeps_its_place_among_the_others_sent_away() {
        let t0 = Instant::now();
        let wanted = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        schedule.push(key("a"), 1, Priority::Unknown, Arc::clone(&wanted), "plain");
        let due = t0 + Duration::from_secs(30);
        schedule.push_patient(key("b"), 2, due, Arc::clone(&wanted), "long poll");
        assert!(schedule.send_away(2) && schedule.send_away(1));
        schedule.push(
            key("c"),
            3,
            Priority::Unknown,
            Arc::clone(&wanted),
            "blocked",
        );
        // Sent away in that order; its old due mark promotes nothing.
        let after_due = t0 + Duration::from_secs(31);
        assert_eq!(
            drain(&mut schedule, after_due),
            ["blocked", "long poll", "plain"]
        );
    }

    #[test]
    fn a_full_schedule_pushes_out_a_task_whose_callers_were_sent_away_first() {
        let t0 = Instant::now();
        let wanted = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        schedule.push(
            key(""),
            1,
            Priority::Unknown,
            Arc::clone(&wanted),
            "blocked",
        );
        schedule.push(key(""), 2, Priority::Unknown, Arc::clone(&wanted), "away");
        assert!(schedule.send_away(2));
        assert_eq!(
            schedule.make_room_for(&key(""), Priority::Unknown),
            Some("away")
        );
        assert_eq!(schedule.make_room_for(&key(""), Priority::Unknown), None);
        assert_eq!(drain(&mut schedule, t0), ["blocked"]);
    }

    #[test]
    fn unknown_tasks_go_before_every_refresh_and_the_stalest_refresh_first() {
        let t0 = Instant::now();
        let later = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        let refresh = |secs| Priority::Refresh {
            fetched_at: t0 + Duration::from_secs(secs),
        };
        schedule.push(key(""), 1, refresh(5), Arc::clone(&later), "fresher");
        schedule.push(key(""), 2, refresh(1), Arc::clone(&later), "stalest");
        schedule.push(key(""), 3, Priority::Unknown, Arc::clone(&later), "new-a");
        schedule.push(key(""), 4, refresh(3), Arc::clone(&later), "middle");
        schedule.push(key(""), 5, Priority::Unknown, Arc::clone(&later), "new-b");
        assert_eq!(schedule.next_priority(), Some(Priority::Unknown));
        assert_eq!(schedule.position_for(Priority::Unknown), 2);
        assert_eq!(
            schedule.position_for(refresh(2)),
            3,
            "after new-a, new-b, stalest"
        );
        assert_eq!(
            drain(&mut schedule, t0),
            ["new-a", "new-b", "stalest", "middle", "fresher"]
        );
        assert!(schedule.is_empty());
    }

    #[test]
    fn unknown_tasks_stay_fair_across_callers() {
        let t0 = Instant::now();
        let later = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        for (id, item) in [(1, "noisy-1"), (2, "noisy-2"), (3, "noisy-3")] {
            schedule.push(
                key("noisy"),
                id,
                Priority::Unknown,
                Arc::clone(&later),
                item,
            );
        }
        schedule.push(
            key("quiet"),
            4,
            Priority::Unknown,
            Arc::clone(&later),
            "quiet-1",
        );
        assert_eq!(
            drain(&mut schedule, t0),
            ["noisy-1", "quiet-1", "noisy-2", "noisy-3"]
        );
    }

    #[test]
    fn a_call_whose_interest_lapsed_leaves_without_a_slot() {
        let t0 = Instant::now();
        let mut schedule = Schedule::default();
        let short = wanted_until(t0 + Duration::from_secs(3));
        let long = wanted_until(t0 + Duration::from_secs(10));
        let refresh = Priority::Refresh { fetched_at: t0 };
        schedule.push(key(""), 1, refresh, Arc::clone(&short), "nobody-asks");
        schedule.push(key(""), 2, refresh, Arc::clone(&long), "still-wanted");
        let now = t0 + Duration::from_secs(4);
        assert_eq!(drain(&mut schedule, now), ["(nobody-asks)", "still-wanted"]);

        // Another ask extends the interest: the same call is wanted again.
        schedule.push(key(""), 3, refresh, Arc::clone(&short), "asked-again");
        short.extend(t0 + Duration::from_secs(8));
        assert_eq!(drain(&mut schedule, now), ["asked-again"]);
    }

    #[test]
    fn a_full_schedule_pushes_out_the_freshest_refresh_first() {
        let t0 = Instant::now();
        let later = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        let refresh = |secs| Priority::Refresh {
            fetched_at: t0 + Duration::from_secs(secs),
        };
        schedule.push(key("a"), 1, refresh(1), Arc::clone(&later), "stale");
        schedule.push(key("a"), 2, refresh(9), Arc::clone(&later), "fresh");
        schedule.push(key("a"), 3, Priority::Unknown, Arc::clone(&later), "new");
        assert_eq!(
            schedule.make_room_for(&key("b"), Priority::Unknown),
            Some("fresh")
        );
        assert_eq!(schedule.make_room_for(&key("b"), refresh(0)), Some("stale"));
        assert_eq!(
            schedule.make_room_for(&key("b"), refresh(0)),
            None,
            "never an unknown task"
        );
        assert!(schedule.remove(3));
        assert!(!schedule.remove(3));
        assert!(schedule.is_empty());
    }
    #[test]
    fn a_caller_who_can_wait_goes_behind_those_who_cannot_until_its_wait_nearly_ends() {
        let t0 = Instant::now();
        let later = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        let urgent_at = |secs| t0 + Duration::from_secs(secs);
        schedule.push_patient(key(""), 1, urgent_at(28), Arc::clone(&later), "poll-1");
        schedule.push_patient(key(""), 2, urgent_at(28), Arc::clone(&later), "poll-2");
        schedule.push_patient(key(""), 3, urgent_at(5), Arc::clone(&later), "poll-3");
        schedule.push(key(""), 4, Priority::Unknown, Arc::clone(&later), "plain");
        let refresh = Priority::Refresh { fetched_at: t0 };
        schedule.push(key(""), 5, refresh, Arc::clone(&later), "refresh");
        assert_eq!(schedule.unknown_len(), 4);
        assert_eq!(schedule.position_for(Priority::Unknown), 1, "behind plain");
        assert_eq!(
            schedule.position_for(refresh),
            5,
            "behind every unknown task and the refresh as stale"
        );

        // Before any is due: the plain request first, then the long polls in arrival order,
        // and every unknown task before the refresh.
        let mut early = Schedule::default();
        early.push_patient(key(""), 1, urgent_at(28), Arc::clone(&later), "poll-1");
        early.push(key(""), 2, Priority::Unknown, Arc::clone(&later), "plain");
        early.push(key(""), 3, refresh, Arc::clone(&later), "refresh");
        assert_eq!(drain(&mut early, t0), ["plain", "poll-1", "refresh"]);

        // poll-3 is due at 5 s: it has joined the urgent ones by then, after plain.
        assert_eq!(
            drain(&mut schedule, urgent_at(6)),
            ["plain", "poll-3", "poll-1", "poll-2", "refresh"]
        );
        assert!(schedule.is_empty());
    }

    #[test]
    fn a_patient_entry_taken_out_early_is_not_promoted_later() {
        let t0 = Instant::now();
        let later = wanted_until(t0 + Duration::from_secs(60));
        let mut schedule = Schedule::default();
        schedule.push_patient(key(""), 1, t0 + Duration::from_secs(1), later, "poll");
        assert!(schedule.remove(1));
        assert!(!schedule.remove(1));
        assert!(schedule.pop(t0 + Duration::from_secs(2)).is_none());
        assert!(schedule.is_empty());
    }
}

//! A FIFO queue per caller, served round-robin: the budget's waiting room.
//!
//! Each caller's lookups keep their order; callers take turns. One noisy service therefore cannot
//! starve the others: with N callers waiting, each gets at least one slot in every N. When the
//! room is full, a newcomer from a caller with fewer waiting than the busiest caller pushes out
//! that caller's newest waiter instead of being refused (the busiest caller pays for the
//! crowding it causes).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Whose queue: a caller's name, or the empty name for unauthenticated lookups.
pub(super) type QueueKey = crate::task::CallerName;

pub(super) struct FairQueue<T> {
    queues: HashMap<QueueKey, VecDeque<(u64, T)>>,
    /// Callers with someone waiting, in the order they are served next.
    turn: VecDeque<QueueKey>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            queues: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn len_of(&self, key: &QueueKey) -> usize {
        self.queues.get(key).map_or(0, VecDeque::len)
    }

    pub(super) fn push(&mut self, key: QueueKey, id: u64, item: T) {
        self.queue_for(key).push_back((id, item));
        self.len += 1;
    }

    /// Queues `item` in its caller's queue by `id` (ids are handed out in arrival order), not at
    /// the back: for an entry that comes back from elsewhere and must keep the place its arrival
    /// gave it, whatever order the moves come in.
    pub(super) fn push_in_order(&mut self, key: QueueKey, id: u64, item: T) {
        let queue = self.queue_for(key);
        let at = queue.partition_point(|(queued, _)| *queued < id);
        queue.insert(at, (id, item));
        self.len += 1;
    }

    /// The caller's queue, its turn taken if it had nobody waiting.
    fn queue_for(&mut self, key: QueueKey) -> &mut VecDeque<(u64, T)> {
        let queue = self.queues.entry(Arc::clone(&key)).or_default();
        if queue.is_empty() {
            self.turn.push_back(key);
        }
        queue
    }

    /// The next waiter: the head of the caller whose turn it is.
    pub(super) fn pop(&mut self) -> Option<T> {
        let key = self.turn.pop_front()?;
        let queue = self.queues.get_mut(&key)?;
        let (_, item) = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turn.push_back(key);
        }
        self.len -= 1;
        Some(item)
    }

    /// Takes a waiter out (it gave up); true if it was still here.
    /// How many entries `pop` hands out before the one with `id`, if it is queued: those ahead
    /// of it in its caller's queue, and as many of every other caller's as the turns give them
    /// meanwhile (one more from a caller whose turn comes first).
    pub(super) fn position_of(&self, id: u64) -> Option<usize> {
        let (key, at) = self.locate(id)?;
        let own_turn = self.turn.iter().position(|k| k == key).unwrap_or(0);
        let others: usize = self
            .turn
            .iter()
            .enumerate()
            .filter(|(_, k)| *k != key)
            .map(|(turn, k)| {
                let before_mine = usize::from(turn < own_turn);
                self.len_of(k).min(at + before_mine)
            })
            .sum();
        Some(at + others)
    }

    /// The queued entry `id`, if it is queued.
    pub(super) fn find(&self, id: u64) -> Option<&T> {
        let (key, at) = self.locate(id)?;
        self.queues.get(key)?.get(at).map(|(_, item)| item)
    }

    /// Whose queue holds the entry `id`, and where in it.
    fn locate(&self, id: u64) -> Option<(&QueueKey, usize)> {
        self.queues.iter().find_map(|(key, queue)| {
            queue
                .iter()
                .position(|(queued, _)| *queued == id)
                .map(|at| (key, at))
        })
    }

    /// How many queued entries (of any caller) `counted` picks.
    pub(super) fn count(&self, counted: impl Fn(u64, &T) -> bool) -> usize {
        self.queues
            .values()
            .flat_map(|queue| queue.iter())
            .filter(|(id, item)| counted(*id, item))
            .count()
    }

    pub(super) fn remove(&mut self, id: u64) -> bool {
        self.take(id).is_some()
    }

    /// Takes a waiter out by id, with whose it was.
    pub(super) fn take(&mut self, id: u64) -> Option<(QueueKey, T)> {
        let (key, at) = self.locate(id).map(|(key, at)| (Arc::clone(key), at))?;
        let queue = self.queues.get_mut(&key).expect("found above");
        let (_, item) = queue.remove(at).expect("found above");
        if queue.is_empty() {
            self.queues.remove(&key);
            self.turn.retain(|k| *k != key);
        }
        self.len -= 1;
        Some((key, item))
    }

    /// Takes out the newest waiter of the busiest caller, whoever that is.
    pub(super) fn pop_newest_of_busiest(&mut self) -> Option<T> {
        let busiest = self
            .queues
            .iter()
            .max_by_key(|(_, q)| q.len())
            .map(|(k, _)| Arc::clone(k))?;
        self.pop_newest_of(&busiest)
    }

    /// Makes room for `key` when full: pushes out the newest waiter of the busiest other caller,
    /// if that caller has more waiting than `key` would. Returns the pushed-out waiter.
    pub(super) fn make_room_for(&mut self, key: &QueueKey) -> Option<T> {
        let mine = self.len_of(key);
        let (busiest, most) = self
            .queues
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, q)| (Arc::clone(k), q.len()))
            .max_by_key(|(_, n)| *n)?;
        if most <= mine + 1 {
            return None;
        }
        self.pop_newest_of(&busiest)
    }

    fn pop_newest_of(&mut self, key: &QueueKey) -> Option<T> {
        let queue = self.queues.get_mut(key)?;
        let (_, item) = queue.pop_back()?;
        if queue.is_empty() {
            self.queues.remove(key);
            self.turn.retain(|k| k != key);
        }
        self.len -= 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> QueueKey {
        Arc::from(name)
    }

    #[test]
    fn callers_take_turns_and_keep_their_own_order() {
        let mut queue = FairQueue::default();
        for i in 0..6 {
            queue.push(key("noisy"), i, format!("noisy-{i}"));
        }
        queue.push(key("quiet"), 10, "quiet-0".to_string());
        queue.push(key("quiet"), 11, "quiet-1".to_string());
        let order: Vec<String> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            [
                "noisy-0", "quiet-0", "noisy-1", "quiet-1", "noisy-2", "noisy-3", "noisy-4",
                "noisy-5"
            ]
        );
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn entries_queued_in_order_keep_their_arrival_order_whatever_order_they_come_in() {
        let mut queue = FairQueue::default();
        for id in [5, 2, 9, 1, 7] {
            queue.push_in_order(key("a"), id, id);
        }
        queue.push_in_order(key("b"), 3, 3);
        let order: Vec<u64> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, [1, 3, 2, 5, 7, 9]);
    }

    #[test]
    fn an_entry_knows_how_many_go_before_it() {
        let mut queue = FairQueue::default();
        for id in 0..4 {
            queue.push(key("noisy"), id, id);
        }
        queue.push(key("quiet"), 10, 10);
        // noisy-0, quiet-10, noisy-1, noisy-2, noisy-3
        let order: Vec<u64> = [0, 10, 1, 2, 3].into();
        for (position, id) in order.iter().enumerate() {
            assert_eq!(queue.position_of(*id), Some(position), "id {id}");
        }
        assert_eq!(queue.position_of(99), None);
        assert_eq!(
            std::iter::from_fn(|| queue.pop()).collect::<Vec<_>>(),
            order
        );
    }

    #[test]
    fn removal_keeps_the_turns_consistent() {
        let mut queue = FairQueue::default();
        queue.push(key("a"), 1, 1);
        queue.push(key("b"), 2, 2);
        assert!(queue.remove(1));
        assert!(!queue.remove(1));
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_full_room_pushes_out_the_busiest_callers_newest() {
        let mut queue = FairQueue::default();
        for i in 0..4 {
            queue.push(key("noisy"), i, i);
        }
        assert_eq!(queue.make_room_for(&key("quiet")), Some(3));
        assert_eq!(queue.len(), 3);
        queue.push(key("quiet"), 9, 9);
        // Balanced enough: no more pushing out.
        queue.push(key("quiet"), 10, 10);
        assert_eq!(queue.make_room_for(&key("quiet")), None);
        assert_eq!(queue.make_room_for(&key("noisy")), None);
    }
}

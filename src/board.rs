//! The answer board: where waiting requests listen for a task's next answer.
//!
//! Whoever learns something about a task that someone is waiting on posts it here: the task's
//! poller, any other lookup that fetched it, or (in shared mode) another replica through pub/sub.
//! Posting to a task nobody waits on costs one map lookup. Waiters hold a watch receiver, so a
//! final answer reaches every one of them the moment it is posted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cache::Answer;
use crate::task::FlowId;

struct Entry {
    sender: watch::Sender<Arc<Answer>>,
    waiters: usize,
}

#[derive(Default)]
pub struct AnswerBoard {
    entries: Mutex<HashMap<FlowId, Entry>>,
}

/// A waiter's place on the board; leaving (drop) takes it off.
pub struct Subscription {
    board: Arc<AnswerBoard>,
    flow_id: FlowId,
    pub receiver: watch::Receiver<Arc<Answer>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut entries = self.board.lock();
        if let Some(entry) = entries.get_mut(&self.flow_id) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                entries.remove(&self.flow_id);
            }
        }
    }
}

impl AnswerBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens for `flow_id`, starting from `current`.
    pub fn subscribe(self: &Arc<Self>, flow_id: FlowId, current: Arc<Answer>) -> Subscription {
        let mut entries = self.lock();
        let entry = entries.entry(flow_id).or_insert_with(|| Entry {
            sender: watch::channel(current).0,
            waiters: 0,
        });
        entry.waiters += 1;
        let receiver = entry.sender.subscribe();
        Subscription {
            board: Arc::clone(self),
            flow_id,
            receiver,
        }
    }

    /// Posts a new answer for anyone waiting on `flow_id`.
    pub fn post(&self, flow_id: FlowId, answer: &Arc<Answer>) {
        if let Some(entry) = self.lock().get(&flow_id) {
            entry.sender.send_replace(Arc::clone(answer));
        }
    }

    /// How many requests wait on `flow_id`.
    pub fn waiters(&self, flow_id: FlowId) -> usize {
        self.lock().get(&flow_id).map_or(0, |e| e.waiters)
    }
}

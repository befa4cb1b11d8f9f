//! The answer board: where waiting requests listen for a task's next answer.
//!
//! Whoever learns something about a task that someone is waiting on posts it here: the task's
//! poller, any other lookup that fetched it, or (in shared mode) another replica through pub/sub.
//! Posting to a task nobody waits on costs one map lookup. Waiters hold a watch receiver, so a
//! final answer reaches every one of them the moment it is posted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::answer::Answer;
use crate::shared::peers::Listeners;
use crate::support::lock;
use crate::task::FlowId;

struct Entry {
    sender: watch::Sender<Arc<Answer>>,
    waiters: usize,
}

#[derive(Default)]
pub(crate) struct AnswerBoard {
    entries: Mutex<HashMap<FlowId, Entry>>,
}

/// A waiter's place on the board; leaving (drop) takes it off.
pub(crate) struct Subscription {
    board: Arc<AnswerBoard>,
    flow_id: FlowId,
    pub receiver: watch::Receiver<Arc<Answer>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut entries = lock(&self.board.entries);
        if let Some(entry) = entries.get_mut(&self.flow_id) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                entries.remove(&self.flow_id);
            }
        }
    }
}

impl AnswerBoard {
    /// Listens for `flow_id`, starting from `current`.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        flow_id: FlowId,
        current: Arc<Answer>,
    ) -> Subscription {
        let mut entries = lock(&self.entries);
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
    pub(crate) fn post(&self, flow_id: FlowId, answer: &Arc<Answer>) {
        if let Some(entry) = lock(&self.entries).get(&flow_id) {
            entry.sender.send_replace(Arc::clone(answer));
        }
    }

    /// How many requests wait on `flow_id`.
    pub(crate) fn waiters(&self, flow_id: FlowId) -> usize {
        lock(&self.entries).get(&flow_id).map_or(0, |e| e.waiters)
    }
}

/// Long polls here hear the answers other replicas publish.
impl Listeners for AnswerBoard {
    fn is_waiting(&self, flow_id: FlowId) -> bool {
        self.waiters(flow_id) > 0
    }

    fn post(&self, flow_id: FlowId, answer: &Arc<Answer>) {
        AnswerBoard::post(self, flow_id, answer);
    }
}

//! Long polls: `GET /tasks/{id}?wait=30s` holds a processing task's request until it finishes.
//!
//! However many requests wait on a task, one poller refreshes it, at the processing interval
//! (slowing down gently for long-running tasks, never faster), every call through the normal
//! lookup and so through the cache, coalescing and the budget. In shared mode a lease in Redis
//! makes it one poller across all replicas; the others hear its answers through pub/sub. Answers
//! reach waiters through the answer board the moment anyone learns them.
//!
//! Bounded: at most `TASKGATE_MAX_WAITERS` requests wait at once (beyond that a request is
//! answered at once with the current status), a poller with no waiters left stops, and on
//! shutdown every waiter is answered at once so draining never waits for long polls.
//!
//! Traced (when traces are on): a request's hold is a `long poll` span (how long it asked to
//! wait, how the wait ended); the poller a waiter starts carries that span's context, so the
//! refreshes it makes show in the trace of the request that started it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::board::AnswerBoard;
use super::context::LookupContext;
use super::pipeline::{Lookup, LookupService};
use crate::answer::{Answer, AnswerKind};
use crate::shared::Peers;
use crate::support::lock;
use crate::task::{CallerName, FlowId};
use crate::telemetry::traces::{Kind, TraceSpan};
use crate::telemetry::{Metrics, Served, WaitEnd};
use crate::upstream::UpstreamClient;

/// Long-poll settings.
#[derive(Debug, Clone, Copy)]
pub struct WaitConfig {
    pub max_wait: Duration,
    pub max_waiters: usize,
    /// The poll interval: the processing interval (`TASKGATE_PROCESSING_TTL`).
    pub interval: Duration,
    /// How long one poll may take (the lookup deadline).
    pub poll_timeout: Duration,
}

/// The poll interval after `polling_for`: the processing interval for the first minute, then one
/// more interval per minute, up to four: a task that runs for hours is not polled every second.
pub(super) fn poll_interval(base: Duration, polling_for: Duration) -> Duration {
    let factor = (1 + polling_for.as_secs() / 60).min(4) as u32;
    base * factor
}

pub(crate) struct WaitService {
    board: Arc<AnswerBoard>,
    lookup: LookupService,
    peers: Option<Arc<Peers>>,
    config: WaitConfig,
    waiting: AtomicUsize,
    pollers: Mutex<HashSet<FlowId>>,
    shutdown: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

/// Counts a request as waiting for as long as it lives.
struct WaiterGuard<'a>(&'a WaitService);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.waiters.dec();
    }
}

impl WaitService {
    pub(crate) fn new(
        board: Arc<AnswerBoard>,
        lookup: LookupService,
        peers: Option<Arc<Peers>>,
        config: WaitConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            board,
            lookup,
            peers,
            config,
            waiting: AtomicUsize::new(0),
            pollers: Mutex::new(HashSet::new()),
            shutdown: watch::channel(false).0,
            metrics,
        }
    }

    pub(crate) fn max_wait(&self) -> Duration {
        self.config.max_wait
    }

    /// Answers every waiter now and refuses new waits (called when draining starts).
    pub(crate) fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Holds a lookup whose answer is `first` until the task leaves processing or `wait` ends,
    /// then returns the current status.
    pub(crate) async fn wait(
        self: &Arc<Self>,
        client: &UpstreamClient,
        flow_id: FlowId,
        first: Lookup,
        wait: Duration,
        caller: Option<CallerName>,
    ) -> Lookup {
        if first.answer.kind != AnswerKind::Processing || wait.is_zero() {
            return first;
        }
        let span = self.lookup.traces().start("long poll", Kind::Internal);
        if span.is_recording() {
            span.set("taskgate.flow_id", flow_id.get());
            let ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            span.set("taskgate.wait.requested_ms", ms);
        }
        let ended = |end: WaitEnd| span.set("taskgate.wait.end", end.as_str());
        if *self.shutdown.borrow() {
            ended(WaitEnd::Shutdown);
            self.metrics.record_wait(WaitEnd::Shutdown, Duration::ZERO);
            return first;
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_waiters {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            ended(WaitEnd::Overflow);
            self.metrics.record_wait(WaitEnd::Overflow, Duration::ZERO);
            return first;
        }
        self.metrics.waiters.inc();
        let _counted = WaiterGuard(self);
        let started = self.lookup.clock().now();

        let mut subscription = self.board.subscribe(flow_id, Arc::clone(&first.answer));
        self.ensure_poller(client, flow_id, caller, &span);
        let mut shutdown = self.shutdown.subscribe();
        let ended = tokio::select! {
            changed = subscription
                .receiver
                .wait_for(|answer| answer.kind != AnswerKind::Processing) => match changed {
                Ok(_) => WaitEnd::Completed,
                Err(_) => WaitEnd::TimedOut,
            },
            _ = tokio::time::sleep(wait) => WaitEnd::TimedOut,
            _ = shutdown.wait_for(|stopping| *stopping) => WaitEnd::Shutdown,
        };
        let answer: Arc<Answer> = Arc::clone(&subscription.receiver.borrow());
        let held = self.lookup.clock().now().saturating_duration_since(started);
        span.set("taskgate.wait.end", ended.as_str());
        self.metrics.record_wait(ended, held);
        let served = if Arc::ptr_eq(&answer, &first.answer) {
            first.served
        } else {
            Served::Coalesced
        };
        Lookup { answer, served }
    }

    /// Starts this replica's poller for `flow_id` unless one runs (in the trace of `span`).
    fn ensure_poller(
        self: &Arc<Self>,
        client: &UpstreamClient,
        flow_id: FlowId,
        caller: Option<CallerName>,
        span: &TraceSpan,
    ) {
        let mut pollers = lock(&self.pollers);
        if !pollers.insert(flow_id) {
            return;
        }
        self.metrics.pollers.inc();
        let service = Arc::clone(self);
        let client = client.clone();
        // On this worker (awc is not Send); it ends when its task has no waiters left.
        actix_rt::spawn(span.wrap(async move {
            service.poll(&client, flow_id, caller).await;
            service.metrics.pollers.dec();
        }));
    }

    async fn poll(&self, client: &UpstreamClient, flow_id: FlowId, caller: Option<CallerName>) {
        let started = self.lookup.clock().now();
        let lease = format!("{:016x}", fastrand::u64(..));
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let polling_for = self.lookup.clock().now().saturating_duration_since(started);
            let interval = poll_interval(self.config.interval, polling_for);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => {}
            }
            {
                // Checked under the pollers lock: a waiter that arrives now either is counted
                // here or finds no poller and starts one.
                let mut pollers = lock(&self.pollers);
                if *self.shutdown.borrow() || self.board.waiters(flow_id) == 0 {
                    pollers.remove(&flow_id);
                    return;
                }
            }
            // In shared mode, one replica polls; the others hear its answers through pub/sub.
            if let Some(peers) = self.peers.as_ref().filter(|p| p.redis().is_usable()) {
                if !peers.hold_poller(flow_id, &lease, interval * 3).await {
                    continue;
                }
            }
            let now = self.lookup.clock().now();
            let context = LookupContext {
                asked_at: now,
                deadline: now + self.config.poll_timeout,
                budget_wait_until: now + interval,
                // Wanted until this poller's next ask, and then some.
                wanted_for: interval * 2,
                trace_id: None,
                caller: caller.clone(),
                kept_call_time: None,
            };
            match self.lookup.lookup(client, flow_id, &context).await {
                Ok(found) => {
                    self.board.post(flow_id, &found.answer);
                    if found.answer.kind != AnswerKind::Processing {
                        lock(&self.pollers).remove(&flow_id);
                        return;
                    }
                }
                Err(error) => log::debug!("long-poll refresh failed: {error}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_slows_down_for_long_running_tasks_but_never_speeds_up() {
        let base = Duration::from_secs(1);
        assert_eq!(poll_interval(base, Duration::ZERO), base);
        assert_eq!(poll_interval(base, Duration::from_secs(59)), base);
        assert_eq!(poll_interval(base, Duration::from_secs(60)), base * 2);
        assert_eq!(poll_interval(base, Duration::from_secs(3_600)), base * 4);
    }
}

//! The shared cache and one lookup per task across replicas.
//!
//! - Cache: `<prefix>answer:<flow id>` holds an answer envelope with a TTL (`PX`) by its kind, in
//!   front of which each replica keeps its own moka cache.
//! - Lookups: the replica that wins `SET <prefix>lease:<flow id> NX PX` fetches; the others wait
//!   for its outcome, published on `<prefix>done:<flow id>` (one pattern subscription per
//!   replica). A waiter whose lease holder vanished (lease expired, no outcome) takes over. The
//!   holder keeps its lease alive while its fetch runs, and deletes it when done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncCommands, Script};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::connection::{Redis, Unavailable};
use super::envelope::{AnswerEnvelope, Outcome};
use crate::answer::Answer;
use crate::support::lock;
use crate::task::FlowId;

/// Gives the lease back if it is still ours and publishes the outcome (ARGV[3]) on its channel
/// (ARGV[2]) in one step. In two, a replica could find the lease still held after the outcome
/// was published, and wait for it until its own deadline: a lookup registers for the outcome
/// before it looks at the lease, so it sees either the lease gone or the outcome come.
const FINISH_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return redis.call('PUBLISH', ARGV[2], ARGV[3])
"#;

/// Takes the poller lease of a task, or keeps it if it is ours already.
const HOLD_POLLER: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#;

/// Extends the lease only if it is still ours.
const RENEW_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

/// The result of trying to lead a lookup across replicas.
pub(crate) enum Lease {
    /// We fetch; the token proves the lease is ours.
    Acquired(String),
    /// Another replica fetches; its lease ends within this long if it is not renewed.
    Held(Duration),
}

/// Who on this replica listens for the answers peers publish (the long polls' answer board).
pub(crate) trait Listeners: Send + Sync {
    /// Whether anyone here waits on `flow_id` (an answer nobody waits on is not even parsed).
    fn is_waiting(&self, flow_id: FlowId) -> bool;
    fn post(&self, flow_id: FlowId, answer: &Arc<Answer>);
}

/// The other replicas, through Redis: their cache, their leases, their published outcomes.
pub(crate) struct Peers {
    redis: Arc<Redis>,
    waiters: Mutex<HashMap<FlowId, Vec<oneshot::Sender<Outcome>>>>,
    finish: Script,
    renew: Script,
    hold_poller: Script,
    lease_ttl: Duration,
    listeners: Arc<dyn Listeners>,
}

impl Peers {
    /// Starts the subscription that wakes this replica's waiters.
    pub(crate) fn start(
        redis: Arc<Redis>,
        lease_ttl: Duration,
        listeners: Arc<dyn Listeners>,
    ) -> Arc<Self> {
        let peers = Arc::new(Self {
            redis,
            waiters: Mutex::new(HashMap::new()),
            finish: Script::new(FINISH_LEASE),
            renew: Script::new(RENEW_LEASE),
            hold_poller: Script::new(HOLD_POLLER),
            lease_ttl,
            listeners,
        });
        let weak = Arc::downgrade(&peers);
        tokio::spawn(async move {
            loop {
                let Some(peers) = weak.upgrade() else { return };
                let pattern = peers.redis.key(&["done", "*"]);
                let prefix = peers.redis.key(&["done", ""]);
                let connected = peers.redis.client().get_async_pubsub().await;
                drop(peers);
                let Ok(mut pubsub) = connected else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                if pubsub.psubscribe(&pattern).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Some(peers) = weak.upgrade() else { return };
                    let flow_id = message
                        .get_channel_name()
                        .strip_prefix(prefix.as_str())
                        .and_then(|id| FlowId::parse(id).ok());
                    let payload: Option<Vec<u8>> = message.get_payload().ok();
                    if let (Some(flow_id), Some(payload)) = (flow_id, payload) {
                        peers.deliver(flow_id, &payload);
                    }
                }
                // The connection ended (Redis restarted or went away): subscribe again.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        peers
    }

    pub(crate) fn redis(&self) -> &Redis {
        &self.redis
    }

    fn deliver(&self, flow_id: FlowId, payload: &[u8]) {
        let senders = lock(&self.waiters).remove(&flow_id).unwrap_or_default();
        // Long polls on this replica hear every answer a peer fetched.
        if self.listeners.is_waiting(flow_id) {
            if let Ok(Outcome::Answer(envelope)) = serde_json::from_slice::<Outcome>(payload) {
                let now = self.redis.now();
                if let Some(answer) = envelope.into_answer(now, Duration::MAX) {
                    self.listeners.post(flow_id, &Arc::new(answer));
                }
            }
        }
        for sender in senders {
            if let Ok(outcome) = serde_json::from_slice::<Outcome>(payload) {
                let _ = sender.send(outcome);
            }
        }
    }

    /// Takes or keeps the poller lease of `flow_id` for this replica's long polls.
    pub(crate) async fn hold_poller(&self, flow_id: FlowId, token: &str, ttl: Duration) -> bool {
        let key = self.redis.key(&["poller", &flow_id.to_string()]);
        let mut conn = self.redis.connection();
        let mut invocation = self.hold_poller.key(&key);
        invocation.arg(token).arg(ttl.as_millis() as u64);
        matches!(
            self.redis
                .run(async move { invocation.invoke_async::<i64>(&mut conn).await })
                .await,
            Ok(1)
        )
    }

    /// Registers interest in a peer's outcome before looking at the lease, so no publish is missed.
    pub(crate) fn register(&self, flow_id: FlowId) -> oneshot::Receiver<Outcome> {
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).entry(flow_id).or_default().push(sender);
        receiver
    }

    pub(crate) fn unregister(&self, flow_id: FlowId) {
        let mut waiters = lock(&self.waiters);
        if let Some(list) = waiters.get_mut(&flow_id) {
            list.retain(|sender| !sender.is_closed());
            if list.is_empty() {
                waiters.remove(&flow_id);
            }
        }
    }

    /// A still-fresh answer from the shared cache.
    pub(crate) async fn cached(
        &self,
        flow_id: FlowId,
        now: Instant,
    ) -> Result<Option<Answer>, Unavailable> {
        let key = self.redis.key(&["answer", &flow_id.to_string()]);
        let mut conn = self.redis.connection();
        let (value, pttl): (Option<Vec<u8>>, i64) = self
            .redis
            .run(async move {
                redis::pipe()
                    .get(&key)
                    .pttl(&key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let (Some(value), true) = (value, pttl > 0) else {
            return Ok(None);
        };
        let envelope: Option<AnswerEnvelope> = serde_json::from_slice(&value).ok();
        Ok(envelope.and_then(|e| e.into_answer(now, Duration::from_millis(pttl as u64))))
    }

    /// Stores an answer for every replica, for as long as its kind allows.
    pub(crate) async fn store(&self, flow_id: FlowId, answer: &Answer, remaining: Duration) {
        let ttl_ms = remaining.as_millis() as u64;
        if ttl_ms == 0 {
            return;
        }
        let key = self.redis.key(&["answer", &flow_id.to_string()]);
        let Ok(value) = serde_json::to_vec(&AnswerEnvelope::of(answer)) else {
            return;
        };
        let mut conn = self.redis.connection();
        let _ = self
            .redis
            .run(async move { conn.pset_ex::<_, _, ()>(&key, value, ttl_ms).await })
            .await;
    }

    /// Tries to become the replica that fetches this flow id.
    pub(crate) async fn try_lease(&self, flow_id: FlowId) -> Result<Lease, Unavailable> {
        let key = self.redis.key(&["lease", &flow_id.to_string()]);
        let token = format!("{}:{:016x}", self.redis.replica_id(), fastrand::u64(..));
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        let mut conn = self.redis.connection();
        let set_token = token.clone();
        let (acquired, pttl): (Option<String>, i64) = self
            .redis
            .run(async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&set_token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .pttl(&key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match acquired {
            Some(_) => Lease::Acquired(token),
            None => Lease::Held(Duration::from_millis(pttl.max(0) as u64)),
        })
    }

    /// Keeps our lease alive while the fetch runs.
    pub(crate) async fn renew(&self, flow_id: FlowId, token: &str) {
        let key = self.redis.key(&["lease", &flow_id.to_string()]);
        let mut conn = self.redis.connection();
        let mut invocation = self.renew.key(&key);
        invocation.arg(token).arg(self.lease_ttl.as_millis() as u64);
        let _ = self
            .redis
            .run(async move { invocation.invoke_async::<i64>(&mut conn).await })
            .await;
    }

    /// Gives the lease up and publishes the outcome to waiting replicas, in one step.
    pub(crate) async fn finish(&self, flow_id: FlowId, token: &str, outcome: &Outcome) {
        let id = flow_id.to_string();
        let channel = self.redis.key(&["done", &id]);
        let key = self.redis.key(&["lease", &id]);
        let Ok(payload) = serde_json::to_vec(outcome) else {
            return;
        };
        let mut conn = self.redis.connection();
        let mut invocation = self.finish.key(&key);
        invocation.arg(token).arg(&channel).arg(payload);
        let _ = self
            .redis
            .run(async move { invocation.invoke_async::<i64>(&mut conn).await })
            .await;
    }

    pub(crate) fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
}

//! A fetch that looks across replicas first (shared mode): the shared cache, then the replica
//! that already fetches this flow id (its lease in Redis), and only then this replica's own
//! attempts, holding the lease so the others wait for it. Without Redis, or while it is
//! unusable, a fetch is this replica's own attempts, within its share of the budget.

use std::sync::Arc;
use std::time::Duration;

use super::attempts::Attempts;
use super::coalesce::{Fetched, Leader, Origin};
use super::context::LookupContext;
use crate::answer::Answer;
use crate::budget::Priority;
use crate::error::ApiError;
use crate::shared::envelope::Outcome;
use crate::shared::{Lease, Peers};
use crate::task::FlowId;
use crate::upstream::UpstreamClient;

/// Extra wait for a peer's published outcome beyond its lease's end.
const LEASE_GRACE: Duration = Duration::from_millis(50);

/// Where a fetch's answer comes from.
pub(crate) struct Fetcher {
    pub attempts: Attempts,
    /// Shared mode's cache and cross-replica lookups, when Redis is configured.
    pub peers: Option<Arc<Peers>>,
}

impl Fetcher {
    pub(crate) async fn fetch(
        &self,
        leader: &Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
        priority: Priority,
    ) -> Result<Fetched, ApiError> {
        let own = Own {
            leader,
            client,
            flow_id,
            context,
            priority,
        };
        let Some(peers) = self.peers.as_ref().filter(|p| p.redis().is_usable()) else {
            return self.own(&own).await;
        };
        let clock = &self.attempts.clock;
        match peers.cached(flow_id, clock.now()).await {
            Ok(Some(answer)) => return Ok(fetched(answer, Origin::SharedCache)),
            Ok(None) => {}
            // Redis is unavailable: this replica fetches on its own, within its local share.
            Err(_) => return self.own(&own).await,
        }
        loop {
            // Listen before looking at the lease, so the holder's publish cannot be missed.
            let outcome = peers.register(flow_id);
            match peers.try_lease(flow_id).await {
                Err(_) => {
                    peers.unregister(flow_id);
                    return self.own(&own).await;
                }
                Ok(Lease::Acquired(token)) => {
                    drop(outcome);
                    peers.unregister(flow_id);
                    return self
                        .as_lease_holder(peers, &token, &own)
                        .await
                        .map(|answer| Fetched {
                            answer,
                            origin: Origin::Upstream,
                        });
                }
                Ok(Lease::Held(lease_left)) => {
                    let now = clock.now();
                    if let Ok(Some(answer)) = peers.cached(flow_id, now).await {
                        peers.unregister(flow_id);
                        return Ok(fetched(answer, Origin::SharedCache));
                    }
                    let wait_until = context.deadline.min(now + lease_left + LEASE_GRACE);
                    if let Ok(Ok(published)) = tokio::time::timeout_at(wait_until, outcome).await {
                        if let Some(result) = published.into_result(clock.now()) {
                            return result.map(|answer| fetched(answer, Origin::Peer));
                        }
                    }
                    // No outcome within the lease: its holder is gone. Take over.
                    peers.unregister(flow_id);
                }
            }
        }
    }

    /// This replica's own attempts.
    async fn own(&self, own: &Own<'_>) -> Result<Fetched, ApiError> {
        let answer = self.attempts(own).await?;
        Ok(fetched(answer, Origin::Upstream))
    }

    async fn attempts(&self, own: &Own<'_>) -> Result<Answer, ApiError> {
        self.attempts
            .run(
                own.leader,
                own.client,
                own.flow_id,
                own.context,
                own.priority,
            )
            .await
    }

    /// Fetches while holding the cross-replica lease; stores and publishes the outcome.
    async fn as_lease_holder(
        &self,
        peers: &Arc<Peers>,
        token: &str,
        own: &Own<'_>,
    ) -> Result<Arc<Answer>, ApiError> {
        let flow_id = own.flow_id;
        let keepalive = {
            let peers = Arc::clone(peers);
            let token = token.to_string();
            tokio::spawn(async move {
                let every = peers.lease_ttl() / 3;
                loop {
                    tokio::time::sleep(every).await;
                    peers.renew(flow_id, &token).await;
                }
            })
        };
        let result = self.attempts(own).await.map(Arc::new);
        keepalive.abort();
        if let Ok(answer) = &result {
            let remaining = answer.remaining(self.attempts.clock.now());
            peers.store(flow_id, answer, remaining).await;
        }
        peers.finish(flow_id, token, &Outcome::of(&result)).await;
        result
    }
}

/// What this replica's own attempts need.
struct Own<'a> {
    leader: &'a Leader,
    client: &'a UpstreamClient,
    flow_id: FlowId,
    context: &'a LookupContext,
    priority: Priority,
}

fn fetched(answer: Answer, origin: Origin) -> Fetched {
    Fetched {
        answer: Arc::new(answer),
        origin,
    }
}

//! In shared mode: the lease this replica spends, and the task that keeps renewing it.
//!
//! The dispatcher's own sliding window runs inside the lease: its cap is the lease's rate, then
//! its safe share, then nothing. The keeper renews every `RENEW_EVERY` with the replica's demand,
//! and at once (at most every `RENEW_SOONEST`) when calls wait beyond the cap. A renewal that
//! fails changes nothing here: the grant in hand runs out by itself, on this replica's clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::shared::{Demand, Grant, LeaseTerms, Leases, Redis};
use crate::support::{lock, Clock};
use crate::telemetry::{Metrics, SharedMode};

/// How often a lease is renewed when nothing asks for more.
pub(crate) const RENEW_EVERY: Duration = Duration::from_millis(250);
/// The shortest time between two renewals, when calls wait for more capacity.
const RENEW_SOONEST: Duration = Duration::from_millis(50);

/// The lease in hand and what it takes to renew it.
pub(crate) struct LeaseKeeper {
    redis: Arc<Redis>,
    leases: Leases,
    grant: Mutex<Option<Grant>>,
    /// The last renewal answered.
    connected: AtomicBool,
    /// The lease was given back on shutdown: no more renewals.
    left: AtomicBool,
    /// Held for each renewal, so that giving the lease back waits for one under way.
    renewing: tokio::sync::Mutex<()>,
    throttled: AtomicBool,
    renew_now: Notify,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl LeaseKeeper {
    pub(crate) fn new(
        redis: Arc<Redis>,
        terms: LeaseTerms,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let leases = Leases::new(&redis, terms);
        metrics.set_shared_mode(SharedMode::Quiet);
        Self {
            redis,
            leases,
            grant: Mutex::new(None),
            connected: AtomicBool::new(false),
            left: AtomicBool::new(false),
            renewing: tokio::sync::Mutex::new(()),
            throttled: AtomicBool::new(false),
            renew_now: Notify::new(),
            metrics,
            clock,
        }
    }

    /// Calls per second this replica may have counted at `now`: nothing before its first grant,
    /// and for a refresh, while the lease lasts, only the part of it that no other replica's
    /// unknown tasks wanted.
    pub(crate) fn cap(&self, now: Instant, refresh: bool) -> u32 {
        match &*lock(&self.grant) {
            None => 0,
            Some(grant) if refresh && now < grant.lease_until => grant.for_refreshes,
            Some(grant) => grant.cap(now),
        }
    }

    /// When the cap changes next, or the next renewal is due.
    pub(crate) fn next_change(&self, now: Instant) -> Instant {
        let soonest = now + RENEW_EVERY;
        lock(&self.grant)
            .as_ref()
            .and_then(|grant| grant.next_change(now))
            .map_or(soonest, |at| at.min(soonest))
    }

    /// Calls wait beyond the cap: renew now rather than at the next tick.
    pub(crate) fn want_more(&self) {
        self.renew_now.notify_one();
    }

    /// Tencent answered `RequestLimitExceeded`: the next renewal lowers the shared limit.
    pub(crate) fn throttled(&self) {
        self.throttled.store(true, Ordering::Relaxed);
        self.renew_now.notify_one();
    }

    /// Calls per second this replica can expect to spend over a queue's worth of waiting, for
    /// `Retry-After`: what the split gives it once every replica has acknowledged it (not the
    /// lease of the moment: the first replica to renew holds the whole limit until the others
    /// report), and while that is within the fair share among the replicas that want capacity,
    /// that share itself (the even split hands its remainder to the replica that wants the
    /// most, so three busy replicas spend 6.67/s each in leases of 6 and 7). Before the first
    /// grant, the lease in hand (none).
    pub(crate) fn expected_rate(&self, now: Instant) -> f64 {
        // The cap first: it takes the same lock.
        let cap = f64::from(self.cap(now, false));
        lock(&self.grant).as_ref().map_or(cap, |grant| {
            expected_share(grant.fair, grant.shared_limit, grant.wanting)
        })
    }

    /// The shared limit as Redis last said it (lowered after throttling).
    pub(crate) fn shared_limit(&self) -> Option<u32> {
        lock(&self.grant).as_ref().map(|grant| grant.shared_limit)
    }

    /// Renews the lease until the budget is gone (`demand` answers `None`) or the lease was
    /// given back; `demand` reads the replica's demand at a given instant and `granted` is told
    /// after every renewal.
    pub(crate) async fn run(
        self: Arc<Self>,
        demand: impl Fn(Instant, &Self) -> Option<Demand>,
        granted: impl Fn(),
    ) {
        let mut last = None::<Instant>;
        loop {
            let now = self.clock.now();
            if let Some(at) = last {
                let due = at + RENEW_EVERY;
                if now < due {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = self.renew_now.notified() => {
                            tokio::time::sleep_until(at + RENEW_SOONEST).await;
                        }
                    }
                }
            }
            let renewing = self.renewing.lock().await;
            let sent = self.clock.now();
            if self.left.load(Ordering::Relaxed) {
                return;
            }
            let Some(mut report) = demand(sent, &self) else {
                return;
            };
            report.throttled = self.throttled.swap(false, Ordering::Relaxed);
            last = Some(sent);
            self.renew(report, sent).await;
            drop(renewing);
            granted();
        }
    }

    async fn renew(&self, report: Demand, sent: Instant) {
        let limit = self.leases.limit();
        self.metrics
            .lease
            .demand
            .set(i64::from(report.total.min(limit)));
        match self.leases.renew(&self.redis, report, sent).await {
            Ok(grant) => {
                self.note_epoch(&grant);
                self.metrics.lease.renewals_ok.inc();
                self.metrics.lease.granted.set(i64::from(grant.rate));
                self.metrics.lease.safe_share.set(i64::from(grant.safe));
                self.metrics.lease.replicas.set(i64::from(grant.replicas));
                *lock(&self.grant) = Some(grant);
                self.connected.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                if report.throttled {
                    // Not told to Redis yet: the next renewal tries again.
                    self.throttled.store(true, Ordering::Relaxed);
                }
                self.metrics.lease.renewals_failed.inc();
                self.connected.store(false, Ordering::Relaxed);
            }
        }
        self.publish(self.clock.now());
    }

    fn note_epoch(&self, fresh: &Grant) {
        let held = lock(&self.grant);
        if let Some(old) = held.as_ref().filter(|old| old.epoch != fresh.epoch) {
            log::warn!(
                "the shared budget's lease table was lost (Redis restarted or flushed: epoch {} \
                 -> {}); holding what this replica had until the other replicas have reported",
                old.epoch,
                fresh.epoch
            );
        }
    }

    /// Publishes the lease in force and the mode it puts the replica in, after every renewal
    /// (whether it answered or not), so at least every `RENEW_EVERY` while the budget exists.
    fn publish(&self, now: Instant) {
        let cap = self.cap(now, false);
        self.metrics.lease.capacity.set(i64::from(cap));
        let mode = match (self.connected.load(Ordering::Relaxed), cap) {
            (true, _) => SharedMode::Shared,
            (false, 0) => SharedMode::Quiet,
            (false, _) => SharedMode::Degraded,
        };
        self.metrics.set_shared_mode(mode);
        let left = lock(&self.grant).as_ref().map_or(0.0, |grant| {
            grant
                .lease_until
                .saturating_duration_since(now)
                .as_secs_f64()
        });
        self.metrics.lease.seconds_left.set(left);
    }

    /// The safe share this replica could still fall back to at `now`.
    pub(crate) fn safe_at(&self, now: Instant) -> u32 {
        lock(&self.grant)
            .as_ref()
            .map_or(0, |grant| grant.safe_at(now))
    }

    /// Gives the lease back on shutdown (nothing is sent after this): only the `held` slots still
    /// count, for `held_for` (unknown while a call is in flight).
    pub(crate) async fn leave(&self, held: u32, held_for: Option<Duration>) {
        let _renewing = self.renewing.lock().await;
        self.left.store(true, Ordering::Relaxed);
        *lock(&self.grant) = None;
        self.leases
            .leave(&self.redis, held, held_for, self.clock.now())
            .await;
    }
}

/// The rate a replica due `fair` can expect over a queue's worth of waiting, when `wanting`
/// replicas (this one counted) share `shared_limit`: the even share while `fair` is within it,
/// else `fair`.
fn expected_share(fair: u32, shared_limit: u32, wanting: u32) -> f64 {
    let share = f64::from(shared_limit) / f64::from(wanting.max(1));
    if f64::from(fair) <= share.ceil() {
        share
    } else {
        f64::from(fair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_expects_its_fair_share_or_its_lease_when_that_is_more() {
        let third = 20.0 / 3.0;
        // Three busy replicas in leases of 7, 7 and 6: each 6.67/s over time.
        assert_eq!(expected_share(7, 20, 3), third);
        assert_eq!(expected_share(6, 20, 3), third);
        // Due less than the share (the others want more, and the split is not even yet).
        assert_eq!(expected_share(1, 20, 3), third);
        // The others want little: it is due more.
        assert_eq!(expected_share(16, 20, 3), 16.0);
        // Alone in wanting: the whole limit.
        assert_eq!(expected_share(20, 20, 1), 20.0);
        // Throttled to 10 for everyone.
        assert_eq!(expected_share(4, 10, 3), 10.0 / 3.0);
    }
}

//! The shared budget's lease as metrics: what this replica holds, what it asked for, and how its
//! renewals went. Registered with every other family, so exported at zero from the start.

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use super::registry::{counters, float_gauge, gauge};

/// How a lease renewal ended (the `outcome` label).
const RENEWAL_OUTCOMES: [&str; 2] = ["ok", "failed"];

#[derive(Debug, Clone)]
pub(crate) struct LeaseMetrics {
    /// Calls per second this replica may spend now (lease, then safe share, then 0).
    pub capacity: IntGauge,
    /// Calls per second the last renewal granted.
    pub granted: IntGauge,
    /// The safe share of the last grant.
    pub safe_share: IntGauge,
    /// Calls per second this replica asked for at its last renewal.
    pub demand: IntGauge,
    /// Replicas holding a lease, as of the last renewal.
    pub replicas: IntGauge,
    /// Seconds until the lease in hand ends on this replica's clock.
    pub seconds_left: Gauge,
    pub renewals_ok: IntCounter,
    pub renewals_failed: IntCounter,
}

impl LeaseMetrics {
    pub(crate) fn register(r: &Registry) -> Self {
        let renewals = counters(
            r,
            "taskgate_lease_renewals_total",
            "Renewals of this replica's lease of the shared budget, by outcome (ok, failed).",
            &["outcome"],
        );
        let [renewals_ok, renewals_failed] =
            RENEWAL_OUTCOMES.map(|outcome| renewals.with_label_values(&[outcome]));
        Self {
            capacity: gauge(
                r,
                "taskgate_lease_capacity",
                "Upstream calls per second this replica may spend now in shared mode: its lease, \
                 after the lease its safe share while Redis cannot be reached, then 0.",
            ),
            granted: gauge(
                r,
                "taskgate_lease_granted",
                "Upstream calls per second granted to this replica by its last lease renewal.",
            ),
            safe_share: gauge(
                r,
                "taskgate_lease_safe_share",
                "Calls per second this replica may still spend after its lease ends while Redis \
                 cannot be reached (counted for it in Redis until then).",
            ),
            demand: gauge(
                r,
                "taskgate_lease_demand",
                "Upstream calls per second this replica asked for at its last renewal (slots in \
                 use plus calls waiting, at most the limit).",
            ),
            replicas: gauge(
                r,
                "taskgate_lease_replicas",
                "Replicas holding a lease of the shared budget, as of the last renewal.",
            ),
            seconds_left: float_gauge(
                r,
                "taskgate_lease_seconds_left",
                "Seconds until this replica's lease ends on its own clock (renewed every 0.25 s).",
            ),
            renewals_ok,
            renewals_failed,
        }
    }
}

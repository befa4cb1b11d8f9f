//! The circuit breaker: it opens after `failures` consecutive transient failures, so lookups that
//! need the upstream are answered 503 at once instead of queueing behind a dead upstream. After
//! the open period one probe call is let through (half-open); its success closes the circuit, its
//! failure opens it again for twice as long (up to a cap). Pure: every method takes `now`.

use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::BreakerState;

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failures: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// How long a probe may take before another one is let through (a probe whose caller
    /// vanished must not keep the circuit half-open for ever).
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { open_for: Duration, since: Instant },
}

/// What the breaker lets a lookup do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead.
    Call,
    /// Go ahead: this call is the single probe of a half-open circuit.
    Probe,
    /// The circuit is open until this instant.
    Rejected { until: Instant },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    circuit: Circuit,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            circuit: Circuit::Closed { failures: 0 },
        }
    }

    pub(crate) fn admit(&mut self, now: Instant) -> Admission {
        match self.circuit {
            Circuit::Closed { .. } => Admission::Call,
            Circuit::Open { until, open_for } if now >= until => {
                self.circuit = Circuit::HalfOpen {
                    open_for,
                    since: now,
                };
                Admission::Probe
            }
            Circuit::Open { until, .. } => Admission::Rejected { until },
            Circuit::HalfOpen { open_for, since } if now >= since + self.config.probe_timeout => {
                self.circuit = Circuit::HalfOpen {
                    open_for,
                    since: now,
                };
                Admission::Probe
            }
            // One probe at a time: the others hear its verdict soon.
            Circuit::HalfOpen { .. } => Admission::Rejected {
                until: now + Duration::from_secs(1),
            },
        }
    }

    /// A call got an answer (any answer that is not a transient failure).
    pub(crate) fn succeeded(&mut self) {
        self.circuit = Circuit::Closed { failures: 0 };
    }

    /// A call failed transiently (transport, timeout, 5xx, InternalError, ServiceUnavailable).
    pub(crate) fn failed(&mut self, now: Instant) {
        self.circuit = match self.circuit {
            Circuit::Closed { failures } if failures + 1 >= self.config.failures => Circuit::Open {
                until: now + self.config.open_for,
                open_for: self.config.open_for,
            },
            Circuit::Closed { failures } => Circuit::Closed {
                failures: failures + 1,
            },
            // Calls already under way when the circuit opened fail too: that says nothing new.
            open @ Circuit::Open { .. } => open,
            // The probe failed: stay away twice as long.
            Circuit::HalfOpen { open_for, .. } => {
                let open_for = (open_for * 2).min(self.config.max_open_for);
                Circuit::Open {
                    until: now + open_for,
                    open_for,
                }
            }
        };
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.circuit {
            Circuit::Closed { .. } => BreakerState::Closed,
            Circuit::Open { .. } => BreakerState::Open,
            Circuit::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig {
            failures: 3,
            open_for: Duration::from_secs(2),
            max_open_for: Duration::from_secs(8),
            probe_timeout: Duration::from_secs(7),
        });
        for _ in 0..2 {
            breaker.failed(t0);
            assert_eq!(breaker.admit(t0), Admission::Call);
        }
        breaker.failed(t0);
        assert_eq!(
            breaker.admit(t0),
            Admission::Rejected {
                until: t0 + Duration::from_secs(2)
            }
        );
        // Calls that were already under way fail too; they do not lengthen the open time.
        for _ in 0..20 {
            breaker.failed(t0 + Duration::from_millis(500));
        }
        assert_eq!(
            breaker.admit(t0 + Duration::from_millis(600)),
            Admission::Rejected {
                until: t0 + Duration::from_secs(2)
            }
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert!(
            matches!(breaker.admit(later), Admission::Rejected { .. }),
            "one probe at a time"
        );
        assert_eq!(
            breaker.admit(later + Duration::from_secs(7)),
            Admission::Probe,
            "a vanished probe is replaced"
        );
        breaker.failed(later);
        assert_eq!(
            breaker.admit(later),
            Admission::Rejected {
                until: later + Duration::from_secs(4)
            },
            "a failed probe doubles the open time"
        );
        let much_later = later + Duration::from_secs(4);
        assert_eq!(breaker.admit(much_later), Admission::Probe);
        breaker.succeeded();
        assert_eq!(breaker.admit(much_later), Admission::Call);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}

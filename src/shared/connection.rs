//! The connection to Redis and the health of shared mode: shared, quiet (changing budgets) or
//! degraded (Redis unavailable), with the probe that finds the way back.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::support::{lock, Clock};
use crate::telemetry::{Metrics, SharedMode};

/// How often a degraded replica checks whether Redis is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// `TASKGATE_REDIS_URL`, whose password never prints.
#[derive(Clone)]
pub struct RedisUrl(pub String);

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `rediss://user:secret@host:6379/0` -> `rediss://user:***@host:6379/0`.
pub(super) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Settings of shared mode.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    pub url: RedisUrl,
    pub prefix: String,
    pub op_timeout: Duration,
    pub expected_replicas: u32,
    /// The budget's window plus margin: how long to stay quiet on a change of mode.
    pub quiet_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Connected,
    /// Redis failed at `since`.
    Down {
        since: Instant,
    },
    /// Redis answered again at `since` after being down.
    Returning {
        since: Instant,
    },
}

/// What the budget may do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Use the shared budget in Redis.
    Shared,
    /// Send nothing until `until`: the other budget may still be counting this window.
    Quiet { until: Instant },
    /// Redis is down: use the local share.
    Degraded,
}

/// The connection and the health of shared mode.
pub(crate) struct Redis {
    conn: ConnectionManager,
    client: redis::Client,
    config: SharedConfig,
    health: Mutex<Health>,
    replica_id: String,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

/// A Redis operation that failed or took too long; the replica is degraded until Redis is back.
#[derive(Debug)]
pub(crate) struct Unavailable;

impl Redis {
    /// Connects lazily (a replica starts even while Redis is down) and starts the health probe.
    pub(crate) fn start(
        config: SharedConfig,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(config.url.0.as_str()).map_err(|e| {
            format!(
                "{} is not a usable Redis URL: {e}",
                redact_url(&config.url.0)
            )
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        let redis = Arc::new(Self {
            conn,
            client,
            config,
            health: Mutex::new(Health::Connected),
            replica_id: format!("{:016x}", fastrand::u64(..)),
            metrics,
            clock,
        });
        redis.publish_mode(Mode::Shared);
        let weak = Arc::downgrade(&redis);
        tokio::spawn(async move {
            // While down, ping twice a second so the way back is found without traffic.
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(redis) = weak.upgrade() else { return };
                if matches!(redis.health(), Health::Down { .. }) {
                    let mut conn = redis.conn.clone();
                    let _ =
                        redis
                            .run(async move {
                                redis::cmd("PING").query_async::<String>(&mut conn).await
                            })
                            .await;
                }
                let now = redis.clock.now();
                redis.publish_mode(redis.mode(now));
            }
        });
        Ok(redis)
    }

    pub(crate) fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Now, on taskgate's clock (answers read from Redis are dated on it).
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.prefix.clone();
        key.push_str(&parts.join(":"));
        key
    }

    fn health(&self) -> Health {
        *lock(&self.health)
    }

    /// What the budget may do at `now`; moves Returning to Connected once the quiet window ends.
    pub(crate) fn mode(&self, now: Instant) -> Mode {
        let mut health = lock(&self.health);
        match *health {
            Health::Connected => Mode::Shared,
            Health::Down { since } if now < since + self.config.quiet_for => Mode::Quiet {
                until: since + self.config.quiet_for,
            },
            Health::Down { .. } => Mode::Degraded,
            Health::Returning { since } if now < since + self.return_quiet() => Mode::Quiet {
                until: since + self.return_quiet(),
            },
            Health::Returning { .. } => {
                *health = Health::Connected;
                log::info!("Redis is back: shared budget, cache and lookups resumed");
                Mode::Shared
            }
        }
    }

    /// How long to stay quiet on the way back to shared mode. Longer than on the way down: other
    /// replicas may notice Redis's return up to one probe (and one operation timeout) later, and
    /// their local calls until then are not in the shared budget.
    fn return_quiet(&self) -> Duration {
        self.config.quiet_for + PROBE_INTERVAL + self.config.op_timeout
    }

    /// Whether cache and lookup coordination should try Redis at all right now.
    pub(crate) fn is_usable(&self) -> bool {
        !matches!(self.health(), Health::Down { .. })
    }

    /// The conservative local share used while degraded.
    pub(crate) fn local_share(&self, limit: u32) -> u32 {
        (limit / self.config.expected_replicas.max(1)).max(1)
    }

    /// Runs one Redis operation with the operation timeout, recording the health it shows.
    pub(crate) async fn run<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let result = tokio::time::timeout(self.config.op_timeout, operation).await;
        let now = self.clock.now();
        match result {
            Ok(Ok(value)) => {
                self.succeeded(now);
                Ok(value)
            }
            Ok(Err(error)) => {
                self.failed(now, &error.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                self.failed(now, "timed out");
                Err(Unavailable)
            }
        }
    }

    fn succeeded(&self, now: Instant) {
        let mut health = lock(&self.health);
        if let Health::Down { .. } = *health {
            *health = Health::Returning { since: now };
            log::info!(
                "Redis answers again: staying quiet for {} ms before resuming the shared budget",
                self.config.quiet_for.as_millis()
            );
        }
    }

    fn failed(&self, now: Instant, why: &str) {
        self.metrics.redis_errors.inc();
        let mut health = lock(&self.health);
        if !matches!(*health, Health::Down { .. }) {
            *health = Health::Down { since: now };
            log::warn!(
                "Redis unavailable ({why}): degraded to local caches and a local budget share \
                 of 1/{} after a quiet window",
                self.config.expected_replicas
            );
        }
    }

    fn publish_mode(&self, mode: Mode) {
        let current = match mode {
            Mode::Shared => SharedMode::Shared,
            Mode::Quiet { .. } => SharedMode::Quiet,
            Mode::Degraded => SharedMode::Degraded,
        };
        self.metrics.set_shared_mode(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            redact_url("rediss://app:s3cret@redis.internal:6380/0"),
            "rediss://app:***@redis.internal:6380/0"
        );
        assert_eq!(
            redact_url("redis://:s3cret@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        let printed = format!("{:?}", RedisUrl("redis://u:pw@h".into()));
        assert!(!printed.contains("pw"));
    }
}

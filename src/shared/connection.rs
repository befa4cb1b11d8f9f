//! The connection to Redis and its health: whether the shared cache and the lookups across
//! replicas should try Redis at all. The budget does not depend on it: it runs on its lease
//! (`lease`), which outlives a failing Redis by itself.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::support::{lock, Clock};
use crate::telemetry::Metrics;

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
}

/// Whether Redis answered the last operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Connected,
    Down,
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
    /// Connects lazily: a replica starts even while Redis is down (its lease keeper renews every
    /// quarter second, which is also how it finds Redis again).
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
        Ok(Arc::new(Self {
            conn,
            client,
            config,
            health: Mutex::new(Health::Connected),
            replica_id: format!("{:016x}", fastrand::u64(..)),
            metrics,
            clock,
        }))
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

    /// Whether cache and lookup coordination should try Redis at all right now.
    pub(crate) fn is_usable(&self) -> bool {
        *lock(&self.health) == Health::Connected
    }

    /// Runs one Redis operation with the operation timeout, recording the health it shows.
    pub(crate) async fn run<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(self.config.op_timeout, operation).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                self.failed(&error.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                self.failed("timed out");
                Err(Unavailable)
            }
        }
    }

    fn succeeded(&self) {
        let mut health = lock(&self.health);
        if *health == Health::Down {
            *health = Health::Connected;
            log::info!("Redis answers again: shared cache and lookups resumed");
        }
    }

    fn failed(&self, why: &str) {
        self.metrics.redis_errors.inc();
        let mut health = lock(&self.health);
        if *health == Health::Connected {
            *health = Health::Down;
            log::warn!(
                "Redis unavailable ({why}): serving from the local cache; the budget runs on \
                 its lease, then its safe share"
            );
        }
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

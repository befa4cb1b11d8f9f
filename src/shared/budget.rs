//! The shared budget: one sorted set per deployment holds every replica's slots, scored by when
//! each stops counting, in milliseconds of the Redis server's clock.
//!
//! Taking a slot is one Lua script (check and take in one atomic step, on the server's clock, so
//! replicas with skewed clocks cannot overspend). A slot is first held pessimistically, until the
//! longest an attempt may take plus one window; when the answer arrives the release script lowers
//! it to "answer + window" on the server's clock, exactly as the local budget does.
//!
//! The schedule holds across replicas too: each take says how many tasks nothing is known about
//! still wait on the taking replica, kept in a second sorted set (`<prefix>budget:unknown`,
//! scored by when that word expires). A refresh is refused while any other replica has such a
//! task waiting, so the shared budget goes to unknown tasks first wherever they are asked. The
//! word is renewed by every take and expires by itself, so a replica that stops cannot hold the
//! others' refreshes back for long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;

use super::connection::{Redis, Unavailable};

const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local replica, waiting, refresh = ARGV[4], tonumber(ARGV[5]), ARGV[6] == '1'
local function unknown_word(left)
  if left > 0 then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), replica)
    redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[7]) + 1000)
  else
    redis.call('ZREM', KEYS[2], replica)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if refresh then
  unknown_word(waiting)
  if redis.call('ZCARD', KEYS[2]) > 0 then
    return {0, tonumber(ARGV[8])}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local used = redis.call('ZCARD', KEYS[1])
if used < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
  if not refresh then unknown_word(waiting - 1) end
  return {1, 0}
end
if not refresh then unknown_word(waiting) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
"#;

const RELEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', 'LT', 'CH', now + tonumber(ARGV[2]), ARGV[1])
"#;

/// The answer of the take script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Take {
    /// A slot, named by its member in the set.
    Granted(String),
    /// No slot; the earliest one frees after this long.
    Refused(Duration),
}

/// How long a replica's word that it has unknown tasks waiting holds without being renewed.
const UNKNOWN_WORD_TTL: Duration = Duration::from_millis(1_000);
/// How soon a refresh refused for another replica's unknown tasks looks again.
const REFRESH_RETRY: Duration = Duration::from_millis(50);

/// What a take is for, as the shared schedule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TakeFor {
    /// A refresh (yields to other replicas' unknown tasks) rather than an unknown task.
    pub refresh: bool,
    /// Unknown tasks waiting on this replica, this take's own included when it is for one.
    pub unknown_waiting: usize,
}

/// Scripts and names for the shared budget.
pub(crate) struct SharedBudget {
    take: Script,
    release: Script,
    key: String,
    unknown_key: String,
    next_slot: AtomicU64,
}

impl SharedBudget {
    pub(crate) fn new(redis: &Redis) -> Self {
        Self {
            take: Script::new(TAKE),
            release: Script::new(RELEASE),
            key: redis.key(&["budget"]),
            unknown_key: redis.key(&["budget", "unknown"]),
            next_slot: AtomicU64::new(0),
        }
    }

    /// Takes a slot if fewer than `limit` count now (and, for a refresh, no other replica has an
    /// unknown task waiting); `hold` is the pessimistic lifetime.
    pub(crate) async fn take(
        &self,
        redis: &Redis,
        limit: u32,
        hold: Duration,
        purpose: TakeFor,
    ) -> Result<Take, Unavailable> {
        let member = format!(
            "{}:{}",
            redis.replica_id(),
            self.next_slot.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = redis.connection();
        let mut invocation = self.take.key(&self.key);
        invocation
            .key(&self.unknown_key)
            .arg(limit)
            .arg(&member)
            .arg(hold.as_millis() as u64)
            .arg(redis.replica_id())
            .arg(purpose.unknown_waiting)
            .arg(if purpose.refresh { "1" } else { "0" })
            .arg(UNKNOWN_WORD_TTL.as_millis() as u64)
            .arg(REFRESH_RETRY.as_millis() as u64);
        let (granted, wait_ms): (i64, i64) = redis
            .run(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(if granted == 1 {
            Take::Granted(member)
        } else {
            Take::Refused(Duration::from_millis(wait_ms.max(1) as u64))
        })
    }

    /// The answer arrived: the slot counts for `cool` more, on the server's clock.
    pub(crate) async fn release(&self, redis: &Redis, member: &str, cool: Duration) {
        let mut conn = redis.connection();
        let mut invocation = self.release.key(&self.key);
        invocation.arg(member).arg(cool.as_millis() as u64);
        // A failed release only keeps the slot until its pessimistic end: safe either way.
        let _ = redis
            .run(async move { invocation.invoke_async::<i64>(&mut conn).await })
            .await;
    }
}

//! The shared budget as capacity leases (after youtube/doorman): each replica holds "up to `c`
//! calls per second until `T`", renews it every quarter second with what it wants, and runs its own
//! sliding-window limiter inside it. Redis only hands out capacity; no lookup waits on it.
//!
//! One hash per deployment (`<prefix>budget:leases`) holds a record per replica, on the Redis
//! server's clock (`TIME`, as every script here). The renewal script:
//! - divides the limit by max-min fair share of the wants, first the calls for tasks nothing is
//!   known about, then refreshes, and what nobody wants equally among the replicas that want
//!   anything (headroom for bursts; an idle replica holds nothing); a part beyond the even share
//!   of the replicas renewing at most doubles the cap the replica applies, so replicas that turn
//!   busy together start even;
//! - grants a replica at most what no other replica may still be spending: every other record
//!   counts as the most it may spend now (its grant, the cap it said it still applies, the slots it
//!   said it still holds; after its lease, its safe share), so the sum of what every replica may
//!   spend never passes the limit;
//! - gives each grant a safe share (half of it, rounded up) that the replica may spend for
//!   `safe_for` after its lease ends when it cannot reach Redis, and counts it until then;
//! - counts a lease until its end plus a tail (the longest attempt, a window and the margin), so a
//!   call sent just before the end is counted until it can no longer be in Tencent's window;
//! - lowers the shared limit for everyone on `RequestLimitExceeded` (halved once per window, never
//!   below a quarter, back by one call per second each second).
//!
//! Capacity moves between replicas as fast as they acknowledge it: each renewal says which cap
//! the replica applies and how many slots it holds, and only from then on is the rest given to
//! others. A record that stops renewing keeps counting until its safe share has ended.
//!
//! If Redis loses the hash (a restart without persistence, a flush), the script starts a new
//! epoch and for a short hold-off grants each replica no more than it says it still holds, so
//! that the replicas that held leases report them before new capacity is handed out.

use std::time::Duration;

use redis::Script;
use tokio::time::Instant;

use super::connection::{Redis, Unavailable};

const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, me = KEYS[1], 'r:' .. ARGV[1]
local limit = tonumber(ARGV[2])
local want_unknown, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local cur, cur_safe, held = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease_ms, safe_ms, tail_ms = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local hold_off_ms, window_ms = tonumber(ARGV[11]), tonumber(ARGV[14])
-- ARGV[13]: empty while renewing; when leaving, how long its held slots still count (ms).
local throttled, leaving_for = ARGV[12] == '1', tonumber(ARGV[13])

local born = tonumber(redis.call('HGET', key, 'born'))
local epoch = redis.call('HGET', key, 'epoch')
if not born or not epoch then
  born = now
  epoch = tostring(now) .. '-' .. ARGV[1]
  redis.call('HSET', key, 'born', born, 'epoch', epoch)
end

-- The shared limit: lowered for everyone when Tencent throttles, recovering by 1/s each second.
local cut, cut_at = tonumber(redis.call('HGET', key, 'cut')), tonumber(redis.call('HGET', key, 'cut_at'))
local eff = limit
if cut then eff = math.min(limit, cut + math.floor((now - cut_at) / 1000)) end
if throttled and (not cut_at or now - cut_at >= window_ms) then
  cut, cut_at = math.max(math.floor(eff / 2), math.floor(limit / 4), 1), now
  redis.call('HSET', key, 'cut', cut, 'cut_at', cut_at)
  eff = cut
elseif cut and eff >= limit then
  redis.call('HDEL', key, 'cut', 'cut_at')
end

-- What a record may still spend now.
local function counted(r)
  local c = 0
  if now < r.t + tail_ms then c = math.max(r.g, r.ga, r.h) end
  if now < r.se + tail_ms then c = math.max(c, r.s, r.sa) end
  return c
end

local others, ids = 0, {ARGV[1]}
local wants_unknown, wants_more = {want_unknown}, {math.max(want - want_unknown, 0)}
local unknown_elsewhere = false
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local f = fields[i]
  if string.sub(f, 1, 2) == 'r:' and f ~= me then
    local r = cjson.decode(fields[i + 1])
    if now >= math.max(r.t, r.se) + tail_ms then
      redis.call('HDEL', key, f)
    else
      others = others + counted(r)
      if now < r.t then
        table.insert(ids, string.sub(f, 3))
        table.insert(wants_unknown, r.wu)
        table.insert(wants_more, math.max(r.w - r.wu, 0))
        if r.wu > 0 then unknown_elsewhere = true end
      end
    end
  end
end

if leaving_for then
  -- Only the slots it still holds count, until they stop.
  local ends = now + leaving_for - tail_ms
  local r = {wu = 0, w = 0, g = 0, ga = 0, h = held, s = 0, sa = 0, t = ends, se = ends}
  redis.call('HSET', key, me, cjson.encode(r))
  return {0, 0, 0, 0, 0, eff, epoch, #ids - 1}
end

-- Splits `capacity` evenly among `members` (indexes), the remainder to those that want the most
-- (by `wants`), then to the lowest ids, so that every replica computes the same split and the
-- parts add up to the whole. A replica left behind by a remainder it did not get wants more at
-- its next renewal and gets it then: over time the split is even to the call.
local function even(capacity, members, wants)
  table.sort(members, function(a, b)
    if wants[a] ~= wants[b] then return wants[a] > wants[b] end
    return ids[a] < ids[b]
  end)
  local parts, share = {}, math.floor(capacity / #members)
  for j, i in ipairs(members) do
    parts[i] = share
    if j <= capacity - share * #members then parts[i] = share + 1 end
  end
  return parts
end

-- Max-min fair share of `capacity` over `wants`: parts by index, and what is left.
local function fill(capacity, wants)
  local order = {}
  for i = 1, #wants do order[i] = i end
  table.sort(order, function(a, b)
    if wants[a] == wants[b] then return ids[a] < ids[b] end
    return wants[a] < wants[b]
  end)
  local parts, left = {}, capacity
  for k = 1, #order do
    local i = order[k]
    if wants[i] * (#order - k + 1) <= left then
      parts[i], left = wants[i], left - wants[i]
    else
      -- Everyone from here wants more than an even split of what is left: split it evenly.
      local rest = {}
      for j = k, #order do table.insert(rest, order[j]) end
      for j, part in pairs(even(left, rest, wants)) do parts[j] = part end
      return parts, 0
    end
  end
  return parts, left
end
local first, left = fill(eff, wants_unknown)
local second, spare = fill(left, wants_more)
-- What nobody wants goes to the replicas that want anything, as headroom for their bursts; an
-- idle replica holds nothing, so a replica that turns busy finds the capacity free.
local extra, active, wants_all = 0, {}, {}
for i = 1, #ids do
  wants_all[i] = wants_unknown[i] + wants_more[i]
  if wants_all[i] > 0 then table.insert(active, i) end
end
if want > 0 and spare > 0 then extra = even(spare, active, wants_all)[1] end

local fair = first[1] + second[1] + extra
-- Beyond the even share of the replicas renewing, a part grows from the cap the replica applies,
-- at most doubling per renewal: when every replica turns busy at once (a release behind a load
-- balancer), the first to renew would otherwise take the whole limit, which the others then find
-- held for a window, and the split would spend the next twenty seconds evening the backlogs out.
-- A replica busy alone still has the whole limit within a few renewals (50 ms apart while it
-- wants more).
fair = math.min(fair, math.max(math.ceil(eff / #ids), 2 * cur))
local grant = math.max(0, math.min(fair, eff - others))
if now < born + hold_off_ms then
  -- A new epoch: hand out nothing new until the replicas that held leases have said so.
  grant = math.min(grant, cur)
end
local safe = math.ceil(grant / 2)
local r = {wu = want_unknown, w = want, g = grant, ga = cur, h = held, s = safe, sa = cur_safe,
           t = now + lease_ms, se = now + lease_ms + safe_ms}
redis.call('HSET', key, me, cjson.encode(r))
redis.call('PEXPIRE', key, 2 * (lease_ms + safe_ms + tail_ms) + 60000)
-- While another replica has tasks nothing is known about waiting, refreshes here may use only
-- what this grant holds beyond this replica's own share for such tasks: the rest of the budget
-- is theirs first. (This replica's own unknown tasks go before its refreshes in its schedule.)
local for_refreshes = grant
if unknown_elsewhere then for_refreshes = math.max(0, grant - first[1]) end
-- What this replica is due once every other has acknowledged the split (the grant may be less
-- until then), and how many replicas want capacity, this one counted: for its estimates.
local wanting = #active
if want == 0 then wanting = wanting + 1 end
return {grant, lease_ms, safe, lease_ms + safe_ms, for_refreshes, eff, epoch, #ids, fair, wanting}
"#;

/// How long leases last and how they are counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseTerms {
    /// The account's limit as configured.
    pub limit: u32,
    /// How long a grant lasts on Redis's clock.
    pub lease_for: Duration,
    /// How long the safe share may be spent after the lease, by a replica cut off from Redis.
    pub safe_for: Duration,
    /// How long after a lease (or safe share) ends its calls may still count at Tencent: the
    /// longest attempt, a window and the margin.
    pub tail: Duration,
    /// Taken off every expiry on this replica's clock, so that clock drift cannot stretch a
    /// lease: at least one window.
    pub local_margin: Duration,
    /// After Redis lost the hash: how long new capacity waits for old holders to report.
    pub hold_off: Duration,
    /// The budget's window (throttling lowers the shared limit at most once per window).
    pub window: Duration,
}

/// What this replica tells Redis at a renewal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Demand {
    /// Tasks nothing is known about waiting here (kept calls included).
    pub unknown: u32,
    /// Calls wanted in all: slots in use plus calls waiting. Both counts go uncapped: beyond the
    /// limit they no longer change a replica's share, but decide who gets the remainder of an
    /// even split (the replica that fell behind).
    pub total: u32,
    /// The cap this replica applies now.
    pub applying: u32,
    /// The safe share this replica could still fall back to.
    pub safe: u32,
    /// Slots this replica's own window counts now.
    pub held: u32,
    /// Tencent answered `RequestLimitExceeded` since the last renewal.
    pub throttled: bool,
}

/// A grant, on this replica's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Calls per second until `lease_until`.
    pub rate: u32,
    pub lease_until: Instant,
    /// Calls per second from `lease_until` until `safe_until`, while Redis cannot be reached.
    pub safe: u32,
    pub safe_until: Instant,
    /// Calls per second refreshes may use until `lease_until`: all of `rate`, or while another
    /// replica has tasks nothing is known about waiting, only what is beyond this replica's own
    /// share for such tasks.
    pub for_refreshes: u32,
    /// The shared limit in force (lowered after throttling).
    pub shared_limit: u32,
    /// The epoch of the hash the grant came from.
    pub epoch: String,
    /// Replicas holding a lease, this one included.
    pub replicas: u32,
    /// What the split gives this replica once every other has acknowledged it (the grant may
    /// be less until then, or more while others give theirs back).
    pub fair: u32,
    /// Replicas that want capacity, this one counted whether it does or not.
    pub wanting: u32,
}

impl Grant {
    /// Calls per second this grant allows at `now` (0 once it and its safe share have ended).
    pub(crate) fn cap(&self, now: Instant) -> u32 {
        if now < self.lease_until {
            self.rate
        } else if now < self.safe_until {
            self.safe
        } else {
            0
        }
    }

    /// The safe share still ahead at `now`.
    pub(crate) fn safe_at(&self, now: Instant) -> u32 {
        if now < self.safe_until {
            self.safe
        } else {
            0
        }
    }

    /// When the cap changes next after `now`, if it does.
    pub(crate) fn next_change(&self, now: Instant) -> Option<Instant> {
        [self.lease_until, self.safe_until]
            .into_iter()
            .find(|at| *at > now)
    }
}

/// The renewal script and its key.
pub(crate) struct Leases {
    script: Script,
    key: String,
    terms: LeaseTerms,
}

impl Leases {
    pub(crate) fn new(redis: &Redis, terms: LeaseTerms) -> Self {
        Self {
            script: Script::new(RENEW),
            key: redis.key(&["budget", "leases"]),
            terms,
        }
    }

    /// The account's limit as configured.
    pub(crate) fn limit(&self) -> u32 {
        self.terms.limit
    }

    /// Renews this replica's lease with `demand`. `sent` is when the request left, on this
    /// replica's clock: every expiry is counted from it, less the local margin.
    pub(crate) async fn renew(
        &self,
        redis: &Redis,
        demand: Demand,
        sent: Instant,
    ) -> Result<Grant, Unavailable> {
        self.call(redis, demand, sent, None).await
    }

    /// Gives the lease back on shutdown: only the `held` slots keep counting, for `held_for`
    /// (the tail when unknown: a call may still be in flight).
    pub(crate) async fn leave(
        &self,
        redis: &Redis,
        held: u32,
        held_for: Option<Duration>,
        sent: Instant,
    ) {
        let demand = Demand {
            held,
            ..Demand::default()
        };
        let held_for = held_for.unwrap_or(self.terms.tail);
        let _ = self.call(redis, demand, sent, Some(held_for)).await;
    }

    async fn call(
        &self,
        redis: &Redis,
        demand: Demand,
        sent: Instant,
        leaving: Option<Duration>,
    ) -> Result<Grant, Unavailable> {
        let terms = &self.terms;
        let mut conn = redis.connection();
        let mut invocation = self.script.key(&self.key);
        invocation
            .arg(redis.replica_id())
            .arg(terms.limit)
            .arg(demand.unknown)
            .arg(demand.total)
            .arg(demand.applying)
            .arg(demand.safe)
            .arg(demand.held)
            .arg(millis(terms.lease_for))
            .arg(millis(terms.safe_for))
            .arg(millis(terms.tail))
            .arg(millis(terms.hold_off))
            .arg(if demand.throttled { "1" } else { "0" })
            .arg(leaving.map_or_else(String::new, |held_for| millis(held_for).to_string()))
            .arg(millis(terms.window));
        type Reply = (u32, u64, u32, u64, u32, u32, String, u32, u32, u32);
        let (
            rate,
            lease_ms,
            safe,
            safe_ms,
            for_refreshes,
            shared_limit,
            epoch,
            replicas,
            fair,
            wanting,
        ): Reply = redis
            .run(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let until = |ms: u64| {
            (sent + Duration::from_millis(ms))
                .checked_sub(terms.local_margin)
                .unwrap_or(sent)
        };
        Ok(Grant {
            rate,
            lease_until: until(lease_ms),
            safe,
            safe_until: until(safe_ms),
            for_refreshes,
            shared_limit,
            epoch,
            replicas,
            fair,
            wanting,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(t0: Instant) -> Grant {
        Grant {
            rate: 8,
            lease_until: t0 + Duration::from_secs(2),
            safe: 4,
            safe_until: t0 + Duration::from_secs(32),
            for_refreshes: 8,
            shared_limit: 20,
            epoch: "1-a".into(),
            replicas: 3,
            fair: 7,
            wanting: 3,
        }
    }

    #[test]
    fn a_grant_steps_down_from_lease_to_safe_share_to_nothing() {
        let t0 = Instant::now();
        let grant = grant(t0);
        assert_eq!(grant.cap(t0), 8);
        assert_eq!(grant.cap(t0 + Duration::from_millis(1_999)), 8);
        assert_eq!(grant.cap(t0 + Duration::from_secs(2)), 4);
        assert_eq!(grant.safe_at(t0 + Duration::from_secs(31)), 4);
        assert_eq!(grant.cap(t0 + Duration::from_secs(32)), 0);
        assert_eq!(grant.safe_at(t0 + Duration::from_secs(32)), 0);
    }

    #[test]
    fn the_next_change_is_the_next_step_down() {
        let t0 = Instant::now();
        let grant = grant(t0);
        assert_eq!(grant.next_change(t0), Some(t0 + Duration::from_secs(2)));
        assert_eq!(
            grant.next_change(t0 + Duration::from_secs(2)),
            Some(t0 + Duration::from_secs(32))
        );
        assert_eq!(grant.next_change(t0 + Duration::from_secs(40)), None);
    }
}

//! Shared mode: several replicas share one budget, one cache and one lookup per task through Redis.
//!
//! Enabled by `TASKGATE_REDIS_URL`; without it nothing here runs. Redis trouble never breaks the
//! promise to stay inside the account's rate: when an operation fails or times out, the replica
//! goes *quiet* for one window (the shared budget may already be spent this second), then serves
//! from its local caches with a conservative local share of the budget
//! (`TASKGATE_RATE_LIMIT / TASKGATE_EXPECTED_REPLICAS`). A probe notices when Redis is back; the
//! replica goes quiet for one more window, plus the time its peers may take to notice (their local
//! calls are not in Redis), and returns to the shared budget by itself. Degraded is not down:
//! readiness stays 200. A partition that cuts only some replicas off Redis can still let the
//! cut-off ones spend their local share beside the shared budget; size EXPECTED_REPLICAS for it.
//!
//! - `connection`: the connection to Redis and the health of shared mode (shared, quiet, degraded)
//! - `budget`: the atomic check-and-take of a slot (Lua, on the server's clock)
//! - `envelope`: answers and errors as they are stored in Redis and published to peers
//! - `peers`: the shared cache and one lookup per task across replicas (a lease per flow id,
//!   results by pub/sub)

pub(crate) mod budget;
mod connection;
pub(crate) mod envelope;
pub(crate) mod peers;

pub(crate) use budget::SharedBudget;
pub(crate) use connection::{Mode, Redis, RedisUrl, SharedConfig};
pub(crate) use peers::{Lease, Peers};

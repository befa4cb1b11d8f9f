//! Shared mode: several replicas share one budget, one cache and one lookup per task through Redis.
//!
//! Enabled by `TASKGATE_REDIS_URL`; without it nothing here runs. Redis trouble never breaks the
//! promise to stay inside the account's rate: the budget is handed out as leases (`lease`) that
//! each replica spends with its own limiter, so a replica cut off from Redis spends only what
//! Redis had already counted for it (its lease, then its safe share, then nothing) and comes back
//! by itself. Degraded is not down: readiness stays 200 and the local cache keeps serving.
//!
//! - `connection`: the connection to Redis and whether it answers
//! - `lease`: the budget as capacity leases, renewed by one Lua script on the server's clock
//! - `envelope`: answers and errors as they are stored in Redis and published to peers
//! - `peers`: the shared cache and one lookup per task across replicas (a lease per flow id,
//!   results by pub/sub)

mod connection;
pub(crate) mod envelope;
mod lease;
pub(crate) mod peers;

pub(crate) use connection::{Redis, RedisUrl, SharedConfig};
pub(crate) use lease::{Demand, Grant, LeaseTerms, Leases};
pub(crate) use peers::{Lease, Peers};

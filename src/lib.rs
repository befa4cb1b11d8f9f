//! taskgate: an HTTP gateway in front of Tencent Cloud SSM `DescribeAsyncRequestInfo`.
//!
//! Internal services call `GET /tasks/{flow_id}`; taskgate signs the upstream call with centrally
//! held credentials and answers clean JSON.
//!
//! - `config`: settings from flags and environment, parsed and validated once
//! - `credentials`: redacting secret types and the swappable credential store
//! - `credentials_file`: the Tencent profile file, re-read on change (`reload`)
//! - `callers`: caller authentication by bearer token, names for metrics and fair queueing
//! - `signing`: TC3-HMAC-SHA256 as pure functions
//! - `task`: flow ids, task status, the task body
//! - `upstream`: the signed awc call and the strict reading of its answer
//! - `lookup`: the pipeline between handler and upstream: cache, coalesce, budget, upstream
//! - `cache`: rendered answers kept by task status (moka)
//! - `coalesce`: one upstream fetch per flow id, shared by concurrent lookups
//! - `budget`: the sliding-window rate limiter with its waiting room (`fair_queue`)
//! - `resilience`: the retry budget and the circuit breaker
//! - `waits`: long polls with one poller per task; `board`: where waiters hear answers
//! - `error`: `ApiError` and its one mapping to problem+json
//! - `metrics`: the Prometheus registry and typed handles
//! - `routes`, `state`, `startup`: the HTTP surface and the application's lifecycle
//! - `observe`: request ids, the access log and HTTP metrics around every request
//! - `logging`: text or JSON log lines, written off the request path
//! - `shared`: shared mode through Redis: one budget, one cache, one lookup per task
//! - `demo`: the embedded simulated upstream behind `--demo`
//! - `swap`: values replaced whole while requests read them (credentials, caller tokens)
//! - `clock`: the seam for time; `civil`: calendar arithmetic without a clock

pub mod board;
pub mod budget;
pub mod cache;
pub mod callers;
pub mod civil;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod credentials;
pub mod credentials_file;
pub mod cvm_role;
pub mod demo;
pub mod error;
pub mod fair_queue;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod observe;
pub mod reload;
pub mod resilience;
pub mod routes;
pub mod shared;
pub mod signing;
pub mod startup;
pub mod state;
pub mod swap;
pub mod task;
pub mod upstream;
pub mod waits;

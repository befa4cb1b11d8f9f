//! Black-box tests: taskgate over real HTTP on loopback against a fake Tencent that verifies
//! signatures independently. One file per concern.

mod budget;
mod cache_compact;
mod caching;
mod callers;
mod credentials;
mod cvm_role;
mod errors;
mod fake_collector;
mod fake_upstream;
mod faults;
mod hardening;
mod helpers;
mod leases;
mod lifecycle;
mod ops;
mod overload;
mod process;
mod redis_server;
mod relay;
mod shared_mode;
mod tasks;
mod tls;
mod trace_export;
mod traces;
mod waits;

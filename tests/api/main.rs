//! Black-box tests: taskgate over real HTTP on loopback against a fake Tencent that verifies
//! signatures independently. One file per concern.

mod budget;
mod caching;
mod errors;
mod fake_upstream;
mod helpers;
mod lifecycle;
mod ops;
mod process;
mod tasks;
mod tls;

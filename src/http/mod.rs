//! The HTTP surface: what callers and probes talk to. It reads requests (flow id, caller, the
//! request grammar) and renders answers; every decision about an answer is the lookup's.
//!
//! - `routes`: the route table and methods
//! - `tasks`: `GET /tasks/{flow_id}`, and how an answer is rendered
//! - `ops`: `/healthz`, `/readyz`, `/metrics`
//! - `grammar`: `X-Request-Timeout`, `?wait=` and `Prefer: wait`
//! - `auth`, `callers`: caller authentication and the tokens file it reads
//! - `middleware`: request id, size limits, the access line and HTTP metrics around every request;
//!   `request_span`: the request's trace span (when traces are on)
//! - `state`: what the handlers read, built once

mod auth;
pub(crate) mod callers;
mod grammar;
mod middleware;
mod ops;
mod request_span;
mod routes;
mod state;
mod tasks;

pub(crate) use callers::{CallerRegistry, CallerTokens};
pub(crate) use middleware::observe;
pub(crate) use routes::{configure, not_found};
pub use state::AppState;

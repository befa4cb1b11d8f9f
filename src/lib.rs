//! taskgate: an HTTP gateway in front of Tencent Cloud SSM `DescribeAsyncRequestInfo`.
//!
//! Internal services call `GET /tasks/{flow_id}`; taskgate signs the upstream call with centrally
//! held credentials, keeps every upstream call inside the account's 20 calls per second, and
//! answers clean JSON.
//!
//! # Layout
//!
//! Folders by concern, in the order a lookup walks through them; each imports only the ones
//! below it in this list (and the small domain files), never one above.
//!
//! - `app`: configuration parsed once, settings grouped by part, start-up and shutdown
//! - `http`: the route table, the task and ops handlers, the request grammar, caller
//!   authentication and the middleware around every request
//! - `lookup`: the pipeline cache -> coalesce -> fetch, across replicas and with its own attempts;
//!   the answer cache, the answer board and long polls
//! - `budget`: the sliding window, the dispatcher and its fair queues, retry budget and breaker
//! - `shared`: shared mode through Redis: one budget, one cache, one lookup per task
//! - `telemetry`: metrics and their label enums, logging, the access line, traces (OTLP)
//! - `upstream`: the endpoint, TC3 signing, the client, answer parsing, TLS, the demo upstream
//! - `credentials`: redacting secret types, the profile file, the CVM role
//! - `support`: the clock seam, files re-read on change, locks, rounding
//!
//! and, directly in `src/`, the domain every folder may use: `task` (flow ids, task status, caller
//! names), `answer` (an answer as both caches hold it) and `error` (`ApiError` and its one mapping
//! to problem+json).
//!
//! # The walk of one lookup
//!
//! `http` parses the flow id, authenticates the caller and reads the grammar; `lookup` answers
//! from its cache, joins the fetch under way for the flow id or starts one; the fetch looks at the
//! shared cache and the replica already fetching (`shared`), then attempts the call: breaker,
//! a slot from `budget`, a signed call through `upstream`; the answer is stored by status, posted
//! to the board, and handed to every caller waiting on it. Errors flow back up as values and are
//! mapped to HTTP once, in `error`.

#![warn(unreachable_pub)]

mod answer;
mod app;
mod budget;
mod credentials;
mod error;
mod http;
mod lookup;
mod shared;
mod support;
mod task;
mod telemetry;
mod upstream;

pub use answer::{Answer, AnswerKind, FinalFacts};
pub use app::{Application, Config, ConfigError, StartupError};
pub use credentials::Credentials;
pub use http::AppState;
pub use lookup::{AnswerCache, CacheLookup, CachePolicy};
pub use support::clock::Clock;
pub use task::{FlowId, FlowIdError, Task, TaskStatus};
pub use telemetry::logging;
pub use upstream::{client::request_body, parse_answer, signing, UpstreamError};

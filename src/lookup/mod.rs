//! The lookup: everything between the HTTP handler and the upstream call, in the order a lookup
//! walks through it.
//!
//! - `pipeline`: cache -> coalesce -> fetch, and back: store by status, wake followers and polls
//! - `cache`: answers kept by task status (moka), bounded in bytes; `compact` and `blocks`: the
//!   compact form of final answers and the blocks of neighbouring flow ids that hold them;
//!   `hot`: the final answers hit last, kept rendered
//! - `coalesce`: one fetch per flow id at a time, shared by every concurrent lookup of it
//! - `replicas`: in shared mode, the shared cache and the replica already fetching come first
//! - `attempts`: breaker, budget slot, signed call, retries with back-off
//! - `board`: where long polls listen for a task's next answer; `waits`: the long polls
//! - `context`: who asks and until when

mod attempts;
mod blocks;
mod board;
mod cache;
mod coalesce;
mod compact;
mod context;
mod hot;
mod pipeline;
mod replicas;
mod waits;

pub(crate) use attempts::Attempts;
pub(crate) use board::AnswerBoard;
pub use cache::{AnswerCache, CacheLookup, CachePolicy};
pub(crate) use context::LookupContext;
pub(crate) use pipeline::{Lookup, LookupService};
pub(crate) use replicas::Fetcher;
pub(crate) use waits::{WaitConfig, WaitService};

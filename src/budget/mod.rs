//! The upstream budget: which lookup may call Tencent, and when.
//!
//! - `window`: the pure sliding window (every method takes `now`), counted where Tencent counts
//! - `schedule`: who gets the next slot: unknown tasks first (fair across callers, `fair_queue`),
//!   then refreshes that someone still wants, the stalest first; `interest`: what a call is worth
//!   and until when anyone wants it
//! - `dispatcher`: the budget every worker takes slots from and its dispatcher task (a call's
//!   wait for a slot: `dispatcher/acquire.rs`); `estimates`: when a queued call's slot is likely to come (`Retry-After`); `kept`: a
//!   call kept for the callers it sent away with a `Retry-After`; `place`: where a queued call
//!   stands, for the `Retry-After` of callers answered while it waits
//! - `lease_keeper`: in shared mode, the lease that caps the window and the task renewing it
//! - `retry_budget`, `breaker`: pure guards against a failing upstream; `resilience` holds both

pub(crate) mod breaker;
mod dispatcher;
mod estimates;
mod fair_queue;
mod interest;
mod kept;
mod lease_keeper;
mod place;
mod resilience;
pub(crate) mod retry_budget;
mod schedule;
mod window;

pub(crate) use breaker::{Admission, BreakerConfig};
pub(crate) use dispatcher::{Budget, SlotAsk};
pub(crate) use interest::{Interest, Priority};
pub(crate) use lease_keeper::RENEW_EVERY;
pub(crate) use place::Place;
pub(crate) use resilience::Resilience;
pub(crate) use retry_budget::RetryBudgetConfig;
pub(crate) use window::BudgetConfig;

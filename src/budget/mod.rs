//! The upstream budget: which lookup may call Tencent, and when.
//!
//! - `window`: the pure sliding window (every method takes `now`), counted where Tencent counts
//! - `dispatcher`: the budget every worker takes slots from, its queue and its dispatcher task;
//!   in shared mode the slots come from Redis
//! - `fair_queue`: one FIFO per caller, served round-robin
//! - `retry_budget`, `breaker`: pure guards against a failing upstream; `resilience` holds both

pub(crate) mod breaker;
mod dispatcher;
mod fair_queue;
mod resilience;
pub(crate) mod retry_budget;
mod window;

pub(crate) use breaker::{Admission, BreakerConfig};
pub(crate) use dispatcher::Budget;
pub(crate) use resilience::Resilience;
pub(crate) use retry_budget::RetryBudgetConfig;
pub(crate) use window::BudgetConfig;

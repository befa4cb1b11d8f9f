//! The one upstream call taskgate makes: SSM `DescribeAsyncRequestInfo`, signed and sent.
//!
//! - `api`: the action's fixed names: service, action, version, content type
//! - `endpoint`: where the calls go (`TASKGATE_UPSTREAM_ENDPOINT`) and the `Host` that is signed
//! - `signing`: TC3-HMAC-SHA256 as pure functions, one per step of Tencent's document
//! - `client`: one signed attempt over awc, with its timeouts
//! - `connections`: counts the connections opened, for the budget's holds
//! - `answer`: bytes to a task or a classified error (pure, fuzzable)
//! - `tls`: the rustls configuration, built once
//! - `demo`: the embedded simulated SSM behind `--demo`

pub(crate) mod answer;
mod api;
pub(crate) mod client;
mod connections;
pub(crate) mod demo;
pub(crate) mod endpoint;
pub mod signing;
pub(crate) mod tls;

pub(crate) use answer::ApiErrorAnswer;
pub(crate) use answer::ErrorFamily;
pub use answer::{parse_answer, UpstreamError};
pub(crate) use client::{UpstreamClient, UpstreamTarget};
pub(crate) use connections::ConnectionsOpened;
pub(crate) use demo::DemoUpstream;
pub(crate) use endpoint::{Endpoint, DEFAULT_ENDPOINT};

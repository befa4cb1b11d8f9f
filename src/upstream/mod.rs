//! The one upstream call taskgate makes: SSM `DescribeAsyncRequestInfo`.
//!
//! `answer` turns bytes into a task or a classified error (pure, fuzzable); `client` signs and
//! sends over awc; `tls` builds the rustls configuration once.

pub mod answer;
pub mod client;
pub mod tls;

pub use answer::{parse_answer, ErrorFamily, UpstreamError};
pub use client::{UpstreamClient, UpstreamTarget};

/// Tencent Cloud's name for the service, as signed in the credential scope.
pub const SERVICE: &str = "ssm";
/// The only action taskgate ever signs.
pub const ACTION: &str = "DescribeAsyncRequestInfo";
/// The API version of that action.
pub const VERSION: &str = "2019-09-23";
/// The content type sent and signed; exactly this string, as the SDKs send it.
pub const CONTENT_TYPE: &str = "application/json";
/// Upper bound on an answer's size; real answers are a few hundred bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

//! The fixed names of the one action taskgate signs, as Tencent Cloud's API 3.0 spells them.

/// Tencent Cloud's name for the service, as signed in the credential scope.
pub(super) const SERVICE: &str = "ssm";
/// The only action taskgate ever signs.
pub(super) const ACTION: &str = "DescribeAsyncRequestInfo";
/// The API version of that action.
pub(super) const VERSION: &str = "2019-09-23";
/// The content type sent and signed; exactly this string, as the SDKs send it.
pub(super) const CONTENT_TYPE: &str = "application/json";
/// Upper bound on an answer's size; real answers are a few hundred bytes.
pub(super) const MAX_ANSWER_BYTES: usize = 64 * 1024;

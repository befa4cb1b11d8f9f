//! What a request is known by in logs, metrics and the upstream's own logs. Set by the HTTP
//! layer in the request's (or response's) extensions, read by the middleware's access line.

use std::sync::Arc;

/// This request's id (`X-Request-Id`), also sent upstream as `X-TC-TraceId`.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub Arc<str>);

/// The caller a request was made by (or `anonymous` / `rejected`), for logs and metrics.
#[derive(Debug, Clone)]
pub(crate) struct CallerLabel(pub Arc<str>);

/// The upstream `RequestId` behind a response, in the response's extensions (for the access log).
#[derive(Debug, Clone)]
pub(crate) struct UpstreamRequestId(pub Arc<str>);

//! Signs and sends one `DescribeAsyncRequestInfo` attempt over awc.
//!
//! `awc::Client` is not `Send`, so each worker thread builds its own `UpstreamClient` (sharing the
//! connector settings in `UpstreamTarget`); connections are reused within a worker.

use std::sync::Arc;
use std::time::Duration;

use awc::http::header;

use super::answer::{parse_answer, UpstreamError};
use super::api::{ACTION, CONTENT_TYPE, MAX_ANSWER_BYTES, SERVICE, VERSION};
use super::connections::{ConnectionsOpened, CountingConnector};
use super::endpoint::Endpoint;
use super::signing::{sign, SigningInput};
use crate::credentials::Credentials;
use crate::task::{FlowId, Task};

/// Where and how to call, shared by all workers.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamTarget {
    pub endpoint: Endpoint,
    pub region: Option<String>,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    /// Connections every worker's client has opened so far.
    pub connections: Arc<ConnectionsOpened>,
}

/// `X-TC-RequestClient`: names taskgate and its version in Tencent's logs and support tickets.
pub(crate) const REQUEST_CLIENT: &str = concat!("taskgate/", env!("CARGO_PKG_VERSION"));

/// The request body for one flow id. Compact JSON; the bytes hashed are the bytes sent.
pub fn request_body(flow_id: FlowId) -> Vec<u8> {
    format!("{{\"FlowID\":{}}}", flow_id.get()).into_bytes()
}

/// One worker's client.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    http: awc::Client,
    target: Arc<UpstreamTarget>,
}

impl UpstreamClient {
    pub(crate) fn new(target: Arc<UpstreamTarget>) -> Self {
        let connector = awc::Connector::new()
            .connector(CountingConnector::new(Arc::clone(&target.connections)))
            .rustls_0_23(Arc::clone(&target.tls))
            .timeout(target.connect_timeout)
            .conn_keep_alive(Duration::from_secs(30))
            .conn_lifetime(Duration::from_secs(300))
            .limit(64);
        let http = awc::Client::builder()
            .connector(connector)
            .no_default_headers()
            .disable_redirects()
            .timeout(target.attempt_timeout)
            .finish();
        Self { http, target }
    }

    /// Where the calls go (for the attempt's span).
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.target.endpoint
    }

    /// One attempt, signed with `timestamp` (Unix seconds, taken by the caller just before).
    /// Bounded by the attempt timeout from connect to the last byte, so a dripping body is cut.
    pub(crate) async fn describe(
        &self,
        credentials: &Credentials,
        flow_id: FlowId,
        timestamp: i64,
        trace_id: Option<&str>,
    ) -> Result<Task, UpstreamError> {
        match tokio::time::timeout(
            self.target.attempt_timeout,
            self.attempt(credentials, flow_id, timestamp, trace_id),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn attempt(
        &self,
        credentials: &Credentials,
        flow_id: FlowId,
        timestamp: i64,
        trace_id: Option<&str>,
    ) -> Result<Task, UpstreamError> {
        let target = &self.target;
        let body = request_body(flow_id);
        let signature = sign(
            credentials,
            &SigningInput {
                service: SERVICE,
                host: &target.endpoint.host,
                content_type: CONTENT_TYPE,
                timestamp,
                body: &body,
            },
        );
        let mut request = self
            .http
            .post(target.endpoint.url.as_str())
            .insert_header((header::HOST, target.endpoint.host.as_str()))
            .insert_header((header::CONTENT_TYPE, CONTENT_TYPE))
            .insert_header((header::AUTHORIZATION, signature.authorization))
            .insert_header(("X-TC-Action", ACTION))
            .insert_header(("X-TC-Version", VERSION))
            .insert_header(("X-TC-Timestamp", timestamp.to_string()))
            .insert_header(("X-TC-Language", "en-US"))
            .insert_header(("X-TC-RequestClient", REQUEST_CLIENT))
            .insert_header((header::USER_AGENT, REQUEST_CLIENT));
        if let Some(region) = &target.region {
            request = request.insert_header(("X-TC-Region", region.as_str()));
        }
        if let Some(token) = &credentials.token {
            request = request.insert_header(("X-TC-Token", token.expose()));
        }
        if let Some(trace_id) = trace_id {
            request = request.insert_header(("X-TC-TraceId", trace_id));
        }
        let mut response = request.send_body(body).await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let bytes = response
            .body()
            .limit(MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                awc::error::PayloadError::Overflow => UpstreamError::Malformed {
                    reason: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                    request_id: None,
                },
                other => UpstreamError::Transport {
                    reason: format!("reading the answer failed: {other}"),
                },
            })?;
        let server_date = response
            .headers()
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<header::HttpDate>().ok())
            .map(std::time::SystemTime::from);
        parse_answer(flow_id, status, &bytes).map_err(|error| match error {
            UpstreamError::Api(mut answer) => {
                answer.server_date = server_date;
                UpstreamError::Api(answer)
            }
            other => other,
        })
    }
}

fn transport_error(error: awc::error::SendRequestError) -> UpstreamError {
    use awc::error::{ConnectError, SendRequestError as E};
    match error {
        E::Timeout => UpstreamError::Timeout,
        E::Connect(ConnectError::Timeout) => UpstreamError::Timeout,
        E::Connect(ConnectError::Io(io)) if tls_failure(&io).is_some() => UpstreamError::Tls {
            reason: tls_failure(&io)
                .map(ToString::to_string)
                .unwrap_or_default(),
        },
        E::Connect(e) => UpstreamError::Transport {
            reason: format!("connect failed: {e}"),
        },
        other => UpstreamError::Transport {
            reason: other.to_string(),
        },
    }
}

/// The rustls error behind a failed connect, if the handshake is what failed (tokio-rustls hands
/// it up wrapped in an `io::Error`).
fn tls_failure(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

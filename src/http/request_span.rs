//! The span of one request, with OpenTelemetry's HTTP server attributes: started from the
//! caller's W3C `traceparent` (a malformed one is ignored), finished with the status and how the
//! answer was served (`X-Cache`). Only made when traces are on.
//!
//! Never recorded: `Authorization` or any other credential, and query values other than `wait`
//! (shown as `REDACTED`). The flow id is only in `url.path`. Probes and scrapes (`/healthz`,
//! `/readyz`, `/metrics`) start no trace of their own; they are traced when a caller's trace
//! asks for them.

use std::borrow::Cow;
use std::sync::Arc;

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, Version};
use opentelemetry::{KeyValue, Value};

use crate::telemetry::traces::propagation::{self, TRACEPARENT, TRACESTATE};
use crate::telemetry::traces::{TraceSpan, Traces};
use crate::telemetry::Route;

/// The request's span (empty when it is not to be traced).
pub(super) fn start(
    traces: &Traces,
    req: &ServiceRequest,
    route: Route,
    request_id: &Arc<str>,
) -> TraceSpan {
    let headers = req.headers();
    let parent = propagation::extract(
        headers.get_all(TRACEPARENT).map(|v| v.as_bytes()),
        headers.get_all(TRACESTATE).map(|v| v.as_bytes()),
    );
    if parent.is_none() && !matches!(route, Route::Task | Route::Unmatched) {
        return TraceSpan::none();
    }
    let method = known_method(req.method());
    let span = traces.server(span_name(method, route), parent);
    if !span.is_recording() {
        return span;
    }
    let version = match req.version() {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    };
    // Set at once (one lock of the span), static and shared values where there are any.
    let mut attributes = Vec::with_capacity(16);
    attributes.extend([
        KeyValue::new("http.request.method", method),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("url.path", req.path().to_owned()),
        KeyValue::new("network.protocol.version", version),
        KeyValue::new("taskgate.request_id", Arc::clone(request_id)),
    ]);
    if method == "_OTHER" {
        let original = req.method().to_string();
        attributes.push(KeyValue::new("http.request.method_original", original));
    }
    if route != Route::Unmatched {
        attributes.push(KeyValue::new("http.route", route.template()));
    }
    if let Some(query) = req.uri().query().filter(|q| !q.is_empty()) {
        attributes.push(KeyValue::new("url.query", redacted_query(query)));
    }
    if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        let (address, port) = split_host(host);
        attributes.push(KeyValue::new("server.address", address.to_owned()));
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    if let Some(peer) = req.peer_addr() {
        attributes.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
        attributes.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    }
    if let Some(agent) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    span.set_all(attributes);
    span
}

/// What the answer says: status, how it was served, who asked (a caller's configured name).
pub(super) fn finish<B>(
    span: &TraceSpan,
    response: &ServiceResponse<B>,
    caller: Option<&Arc<str>>,
    upstream_request_id: Option<Arc<str>>,
) {
    if !span.is_recording() {
        return;
    }
    let status = response.status().as_u16();
    let mut attributes = Vec::with_capacity(6);
    attributes.push(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if let Some(served) = response.headers().get("x-cache") {
        let served: Value = match served.as_bytes() {
            b"hit" => "hit".into(),
            b"miss" => "miss".into(),
            b"coalesced" => "coalesced".into(),
            b"stale" => "stale".into(),
            other => String::from_utf8_lossy(other).into_owned().into(),
        };
        attributes.push(KeyValue::new("taskgate.served", served));
    }
    if let Some(caller) = caller {
        attributes.push(KeyValue::new("taskgate.caller", Arc::clone(caller)));
    }
    if let Some(id) = upstream_request_id {
        attributes.push(KeyValue::new("tencentcloud.request_id", id));
    }
    // Server spans fail on 5xx only: a 4xx is the caller's mistake, answered correctly.
    if status >= 500 {
        attributes.push(KeyValue::new("error.type", status.to_string()));
        span.fail(format!("answered {status}"));
    }
    span.set_all(attributes);
}

/// The method as the conventions name it: one of HTTP's, else `_OTHER`.
fn known_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// `{method} {route}`, or the method alone for a path no route matched.
fn span_name(method: &'static str, route: Route) -> Cow<'static, str> {
    match (method, route) {
        (_, Route::Unmatched) => Cow::Borrowed(if method == "_OTHER" { "HTTP" } else { method }),
        ("GET", Route::Task) => Cow::Borrowed("GET /tasks/{flow_id}"),
        ("HEAD", Route::Task) => Cow::Borrowed("HEAD /tasks/{flow_id}"),
        (method, route) => Cow::Owned(format!("{method} {}", route.template())),
    }
}

/// The query with every value but `wait`'s replaced by `REDACTED`: a caller may put anything
/// there, and none of it is taskgate's to record.
fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("wait", value)) => format!("wait={value}"),
            Some((name, _)) => format!("{name}=REDACTED"),
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `host:port` (or `[v6]:port`) into the host and the port, when given.
fn split_host(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => (
            name.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok(),
        ),
        _ => (host.trim_start_matches('[').trim_end_matches(']'), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_wait_value_is_kept_in_the_query() {
        assert_eq!(
            redacted_query("wait=30s&token=abc&flag"),
            "wait=30s&token=REDACTED&flag"
        );
    }

    #[test]
    fn hosts_split_into_address_and_port() {
        assert_eq!(split_host("gate:8080"), ("gate", Some(8080)));
        assert_eq!(split_host("gate"), ("gate", None));
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("::1"), ("::1", None));
    }

    #[test]
    fn span_names_are_method_and_route() {
        assert_eq!(span_name("GET", Route::Task), "GET /tasks/{flow_id}");
        assert_eq!(span_name("GET", Route::Readyz), "GET /readyz");
        assert_eq!(span_name("POST", Route::Unmatched), "POST");
        assert_eq!(span_name("_OTHER", Route::Unmatched), "HTTP");
    }
}

//! A fake OTLP/HTTP collector for the trace tests: a raw HTTP/1.1 server on `127.0.0.1:0` (its
//! own thread and runtime) that keeps every request's bytes and headers, answers 200 with an
//! empty `ExportTraceServiceResponse`, and decodes what it got with the `opentelemetry-proto`
//! types; and a dead one, a bound socket that never accepts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One export as it arrived.
#[derive(Clone, Debug)]
pub struct Export {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct FakeCollector {
    /// The base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub url: String,
    exports: Arc<Mutex<Vec<Export>>>,
}

/// A span with what the tests look at, decoded.
#[derive(Clone, Debug)]
pub struct SeenSpan {
    pub name: String,
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub trace_state: String,
    pub status_code: i32,
    pub attributes: HashMap<String, String>,
    /// The resource's attributes.
    pub resource: HashMap<String, String>,
}

impl SeenSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

impl FakeCollector {
    pub fn start() -> Self {
        let exports = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = Arc::clone(&exports);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(stream, Arc::clone(&kept)));
                }
            });
        });
        let port = rx.recv().unwrap();
        Self {
            url: format!("http://127.0.0.1:{port}"),
            exports,
        }
    }

    pub fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far, decoded.
    pub fn spans(&self) -> Vec<SeenSpan> {
        let mut spans = Vec::new();
        for export in self.exports() {
            let request = ExportTraceServiceRequest::decode(export.body.as_slice())
                .expect("the body is an ExportTraceServiceRequest");
            for resource_spans in request.resource_spans {
                let resource = resource_spans
                    .resource
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    spans.extend(scope.spans.iter().map(|s| seen(s, &resource)));
                }
            }
        }
        spans
    }

    /// Waits (30 s at most) until spans named `names` all arrived; returns every span.
    pub async fn until_spans(&self, names: &[&str]) -> Vec<SeenSpan> {
        for _ in 0..3000 {
            let spans = self.spans();
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("spans {names:?} never arrived: {:#?}", self.spans());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn seen(span: &Span, resource: &HashMap<String, String>) -> SeenSpan {
    SeenSpan {
        name: span.name.clone(),
        kind: span.kind,
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        trace_state: span.trace_state.clone(),
        status_code: span.status.as_ref().map_or(0, |s| s.code),
        attributes: attributes(&span.attributes),
        resource: resource.clone(),
    }
}

/// Keep-alive HTTP/1.1: each request read whole (Content-Length), kept, answered 200.
async fn serve(mut stream: TcpStream, exports: Arc<Mutex<Vec<Export>>>) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_default()
            .to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        exports.lock().unwrap().push(Export {
            path,
            headers,
            body,
        });
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// A collector that is dead but looks alive to `connect`: a bound socket that never accepts
/// (the kernel completes handshakes into its backlog) and so never answers. Kept open while the
/// value lives.
pub struct DeadCollector {
    pub url: String,
    _listener: std::net::TcpListener,
}

impl DeadCollector {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        Self {
            url: format!("http://127.0.0.1:{port}"),
            _listener: listener,
        }
    }
}

//! The way out: OTLP over HTTP/protobuf, on a thread of its own.
//!
//! A span that ends goes into a bounded queue without ever waiting or waking anyone: when the
//! queue is full the span is dropped and counted
//! (`taskgate_trace_spans_dropped_total{reason="queue_full"}`), so a dead or slow collector costs
//! requests nothing. One thread (`taskgate-otlp`, its own actix runtime) takes what is queued
//! when a batch is full or every `OTEL_BSP_SCHEDULE_DELAY`, encodes it with the `opentelemetry-proto` types and `prost`, and posts them with awc
//! over the crate's rustls, one export at a time, each bounded by `OTEL_EXPORTER_OTLP_TIMEOUT`.
//! A batch that fails is dropped and counted (`export_failed`); spans a collector says it
//! rejected are counted too (`rejected`). On shutdown the queue is flushed within the deadline the
//! drain leaves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use prost::Message;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::config::TraceConfig;
use super::counters::TraceCounters;
use crate::support::lock;

/// How often a collector that keeps failing is reported in the log.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Longest collector answer read (a partial-success message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Ended spans waiting for export: a vector under a lock, so that adding one costs a lock and
/// a push and wakes nobody (a channel would wake the export thread for every span: a context
/// switch per request). The export thread is woken when a batch is full, else by its timer.
#[derive(Debug)]
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    /// Signalled when the queue holds a full batch.
    batch_full: Notify,
    max_queue: usize,
    max_batch: usize,
}

impl Queue {
    fn take(&self) -> Vec<SpanData> {
        std::mem::take(&mut *lock(&self.spans))
    }
}

/// The span processor the SDK calls when a sampled span ends: into the queue, or dropped.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    queue: Arc<Queue>,
    counters: TraceCounters,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let queued = {
            let mut spans = lock(&self.queue.spans);
            if spans.len() >= self.queue.max_queue {
                None
            } else {
                spans.push(span);
                Some(spans.len())
            }
        };
        match queued {
            None => self.counters.dropped_queue_full.inc(),
            Some(len) if len == self.queue.max_batch => self.queue.batch_full.notify_one(),
            Some(_) => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// The export thread is stopped by [`ExportHandle::flush`], within the drain; the SDK's own
    /// shutdown (when the provider is dropped) must not block.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Stops the export thread after it sent what is queued.
pub(crate) struct ExportHandle {
    stop: oneshot::Sender<Instant>,
    done: oneshot::Receiver<()>,
}

impl ExportHandle {
    /// Sends what is queued, waiting until `deadline` at most (a dead collector cannot hold the
    /// process past its drain).
    pub(crate) async fn flush(self, deadline: Instant) {
        if self.stop.send(deadline).is_err() {
            return;
        }
        if tokio::time::timeout_at(deadline, self.done).await.is_err() {
            log::warn!("traces: the collector did not take the last spans before the deadline");
        }
    }
}

/// Starts the export thread; returns the processor to register and the handle that stops it.
pub(super) fn start(
    config: &TraceConfig,
    counters: TraceCounters,
) -> std::io::Result<(QueueProcessor, ExportHandle)> {
    let queue = Arc::new(Queue {
        spans: Mutex::new(Vec::new()),
        batch_full: Notify::new(),
        max_queue: config.max_queue.max(1),
        max_batch: config.max_batch.max(1),
    });
    let (stop, stopped) = oneshot::channel();
    let (finished, done) = oneshot::channel();
    let poster = Poster::new(config, counters.clone());
    let (exported, delay) = (Arc::clone(&queue), config.schedule_delay);
    std::thread::Builder::new()
        .name("taskgate-otlp".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                let mut poster = poster.connect();
                batches(&exported, stopped, &mut poster, delay).await;
                let _ = finished.send(());
            });
        })?;
    Ok((
        QueueProcessor { queue, counters },
        ExportHandle { stop, done },
    ))
}

/// Sends what is queued whenever a batch is full or the schedule delay passed, until stopped;
/// then sends what is left within the stop's deadline.
async fn batches(
    queue: &Queue,
    mut stop: oneshot::Receiver<Instant>,
    poster: &mut Connected,
    delay: Duration,
) {
    let deadline = loop {
        tokio::select! {
            biased;
            at = &mut stop => break at.unwrap_or_else(|_| Instant::now()),
            _ = queue.batch_full.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        for batch in chunks(queue.take(), queue.max_batch) {
            poster.export(batch, None).await;
        }
    };
    for batch in chunks(queue.take(), queue.max_batch) {
        poster.export(batch, Some(deadline)).await;
    }
}

/// `spans` in batches of at most `size`, in order.
fn chunks(mut spans: Vec<SpanData>, size: usize) -> Vec<Vec<SpanData>> {
    let mut batches = Vec::with_capacity(spans.len().div_ceil(size));
    while spans.len() > size {
        let rest = spans.split_off(size);
        batches.push(std::mem::replace(&mut spans, rest));
    }
    if !spans.is_empty() {
        batches.push(spans);
    }
    batches
}

/// What one export needs, built on the caller's thread (awc's client is made on the export
/// thread: it is not `Send`).
struct Poster {
    url: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    tls: std::sync::Arc<rustls::ClientConfig>,
    resource: ResourceAttributesWithSchema,
    counters: TraceCounters,
}

impl Poster {
    fn new(config: &TraceConfig, counters: TraceCounters) -> Self {
        Self {
            url: config.url.clone(),
            headers: config.headers.clone(),
            timeout: config.timeout,
            tls: std::sync::Arc::clone(&config.tls),
            resource: ResourceAttributesWithSchema::from(&config.resource as &Resource),
            counters,
        }
    }

    fn connect(self) -> Connected {
        let connector = awc::Connector::new()
            .rustls_0_23(std::sync::Arc::clone(&self.tls))
            .timeout(self.timeout)
            .limit(1);
        let client = awc::Client::builder()
            .connector(connector)
            .no_default_headers()
            .disable_redirects()
            .timeout(self.timeout)
            .finish();
        Connected {
            client,
            poster: self,
            failing_since: None,
            reported: None,
        }
    }
}

struct Connected {
    client: awc::Client,
    poster: Poster,
    /// When the exports started failing, and when that was last logged.
    failing_since: Option<Instant>,
    reported: Option<Instant>,
}

impl Connected {
    async fn export(&mut self, batch: Vec<SpanData>, deadline: Option<Instant>) {
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.poster.resource),
        };
        let now = Instant::now();
        let limit = deadline.map_or(now + self.poster.timeout, |d| {
            d.min(now + self.poster.timeout)
        });
        let counters = &self.poster.counters;
        match tokio::time::timeout_at(limit, self.post(request.encode_to_vec())).await {
            Ok(Ok(rejected)) => {
                let rejected = rejected.min(count);
                counters.exported.inc_by(count - rejected);
                counters.dropped_rejected.inc_by(rejected);
                if let Some(since) = self.failing_since.take() {
                    log::info!(
                        "traces: the collector takes spans again (it failed for {} s)",
                        since.elapsed().as_secs()
                    );
                }
            }
            failed => {
                counters.dropped_export_failed.inc_by(count);
                let reason = match failed {
                    Ok(Err(reason)) => reason,
                    _ => "no answer in time".to_owned(),
                };
                self.report_failure(&reason);
            }
        }
    }

    /// One POST; the number of spans the collector says it rejected.
    async fn post(&self, body: Vec<u8>) -> Result<u64, String> {
        let mut request = self
            .client
            .post(&self.poster.url)
            .insert_header(("content-type", "application/x-protobuf"))
            .insert_header((
                "user-agent",
                concat!("taskgate/", env!("CARGO_PKG_VERSION")),
            ));
        for (name, value) in &self.poster.headers {
            request = request.insert_header((name.as_str(), value.as_str()));
        }
        let mut response = request
            .send_body(body)
            .await
            .map_err(|e| format!("sending failed: {e}"))?;
        let status = response.status();
        let answer = response
            .body()
            .limit(MAX_ANSWER_BYTES)
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if !status.is_success() {
            return Err(format!("the collector answered {status}"));
        }
        let partial = ExportTraceServiceResponse::decode(answer)
            .ok()
            .and_then(|answer| answer.partial_success);
        Ok(partial.map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)))
    }

    /// Logs the first failure at once, then at most once a minute while they go on.
    fn report_failure(&mut self, reason: &str) {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        if self
            .reported
            .is_some_and(|at| at >= since && now < at + REPORT_EVERY)
        {
            return;
        }
        self.reported = Some(now);
        log::warn!(
            "traces: export to {} failed ({reason}); spans are dropped and counted in \
             taskgate_trace_spans_dropped_total until the collector answers",
            self.poster.url.split('?').next().unwrap_or_default()
        );
    }
}

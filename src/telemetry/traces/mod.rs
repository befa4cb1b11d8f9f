//! OpenTelemetry traces: W3C Trace Context in, OTLP over HTTP/protobuf out; off unless an OTLP
//! endpoint is configured (then no exporter, no thread, no span objects).
//!
//! - `propagation`: the caller's `traceparent` / `tracestate`, read strictly (malformed: ignored)
//! - `config`: what the exporter is built from; sampler names, `key=value` lists, the resource
//! - `span`: `Traces` and `TraceSpan`, what the rest of the crate starts spans with
//! - `export`: the bounded queue and the export thread (awc, `opentelemetry-proto` + `prost`)
//! - `counters`: the exporter's metrics (spans exported, spans dropped by reason)
//!
//! Generic on purpose: which spans exist and what they say is decided where the work is done
//! (the middleware, the lookup); this folder only knows how spans are made and sent.

mod config;
mod counters;
mod export;
pub(crate) mod propagation;
mod span;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub(crate) use config::{key_values, resource, sampler, TraceConfig};
pub(crate) use counters::TraceCounters;
pub(crate) use export::ExportHandle;
pub(crate) use span::{Kind, TraceSpan, Traces};

/// Starts the export thread and the tracer that feeds it.
pub(crate) fn start(
    config: &TraceConfig,
    counters: TraceCounters,
) -> std::io::Result<(Traces, ExportHandle)> {
    let (processor, handle) = export::start(config, counters)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(config.sampler.clone())
        .with_resource(config.resource.clone())
        .build();
    let scope = InstrumentationScope::builder("taskgate")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    Ok((Traces(Some(provider.tracer_with_scope(scope))), handle))
}

//! The exporter's own metrics, registered with every other family (and so exported at zero from
//! the start, whether traces are configured or not).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Why a span did not reach the collector (the `reason` label).
const DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "rejected"];

#[derive(Debug, Clone)]
pub(crate) struct TraceCounters {
    pub exported: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub dropped_export_failed: IntCounter,
    pub dropped_rejected: IntCounter,
}

impl TraceCounters {
    pub(crate) fn register(registry: &Registry) -> Self {
        let exported = IntCounter::new(
            "taskgate_trace_spans_exported_total",
            "Spans the OTLP collector accepted.",
        )
        .expect("valid metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "taskgate_trace_spans_dropped_total",
                "Sampled spans that never reached the collector, by reason: queue_full (the \
                 export queue was full: the collector is slow or down), export_failed (a batch's \
                 export failed or timed out), rejected (the collector refused them).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(exported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dropped.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique and valid");
        }
        let [queue_full, export_failed, rejected] =
            DROP_REASONS.map(|reason| dropped.with_label_values(&[reason]));
        Self {
            exported,
            dropped_queue_full: queue_full,
            dropped_export_failed: export_failed,
            dropped_rejected: rejected,
        }
    }
}

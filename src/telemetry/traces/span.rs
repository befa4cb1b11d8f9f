//! `Traces`, what the rest of the crate starts spans with, and `TraceSpan`, one span.
//!
//! Off (no endpoint configured), `Traces` holds nothing: starting a span is one branch that
//! returns an empty `TraceSpan`, whose methods are each one branch too; no span object is made.
//! On, a request's span is made from the caller's context (or starts a trace), and the request's
//! future runs with it attached (`TraceSpan::wrap`), so the spans started below it (`start`) are
//! its children; work spawned off the request carries the context along (`Traces::carry`). A
//! child span is only made under a span: work outside any request starts no trace of its own.

use std::borrow::Cow;
use std::future::Future;

use futures_util::future::Either;
use opentelemetry::context::WithContext;
use opentelemetry::trace::{
    FutureExt as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::SdkTracer;

pub(crate) use opentelemetry::trace::SpanKind as Kind;

/// The tracer, when traces are exported.
#[derive(Clone, Default, Debug)]
pub(crate) struct Traces(pub(super) Option<SdkTracer>);

/// A future that runs with a span's context attached, or as it is when there is none.
pub(crate) type Traced<F> = Either<WithContext<F>, F>;

impl Traces {
    /// No tracing: every span is empty.
    pub(crate) fn off() -> Self {
        Self(None)
    }

    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// A request's span: a child of the caller's span when it sent a valid one, else the root of
    /// a new trace. Its attributes are set by the caller, when it is recording.
    pub(crate) fn server(
        &self,
        name: impl Into<Cow<'static, str>>,
        parent: Option<SpanContext>,
    ) -> TraceSpan {
        let Some(tracer) = &self.0 else {
            return TraceSpan(None);
        };
        let parent = match parent {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        TraceSpan(Some(parent.with_span(span)))
    }

    /// A child of the current span (the one the running future was wrapped in); nothing when
    /// there is none.
    pub(crate) fn start(&self, name: &'static str, kind: Kind) -> TraceSpan {
        let Some(tracer) = &self.0 else {
            return TraceSpan(None);
        };
        let parent = Context::current();
        if !parent.has_active_span() {
            return TraceSpan(None);
        }
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer, &parent);
        TraceSpan(Some(parent.with_span(span)))
    }

    /// `future` with the current span's context, for work spawned off a request (a detached
    /// fetch, a long poll's poller): its spans stay in the request's trace.
    pub(crate) fn carry<F: Future>(&self, future: F) -> Traced<F> {
        if self.0.is_some() {
            let current = Context::current();
            if current.has_active_span() {
                return Either::Left(future.with_context(current));
            }
        }
        Either::Right(future)
    }
}

/// One span, ended when dropped; empty when traces are off or no parent was current.
pub(crate) struct TraceSpan(Option<Context>);

impl TraceSpan {
    /// No span.
    pub(crate) fn none() -> Self {
        Self(None)
    }

    /// Whether attributes set on it are kept (it is sampled): the guard of any attribute whose
    /// value costs something to make.
    pub(crate) fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    pub(crate) fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Sets several attributes at once (one lock of the span).
    pub(crate) fn set_all(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attributes(attributes);
        }
    }

    /// Marks the span failed (`Status::Error`), with a short description.
    pub(crate) fn fail(&self, description: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(description));
        }
    }

    /// The trace this span belongs to (sampled or not), for the access log.
    pub(crate) fn trace_id(&self) -> Option<TraceId> {
        self.0
            .as_ref()
            .map(|cx| cx.span().span_context().trace_id())
            .filter(|id| *id != TraceId::INVALID)
    }

    /// `future` with this span as the current one: spans it starts are this one's children.
    pub(crate) fn wrap<F: Future>(&self, future: F) -> Traced<F> {
        match &self.0 {
            Some(cx) => Either::Left(future.with_context(cx.clone())),
            None => Either::Right(future),
        }
    }
}

impl Drop for TraceSpan {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

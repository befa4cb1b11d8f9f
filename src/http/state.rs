//! Process-wide state the handlers read, built once at start: readiness, metrics, the request
//! deadline, caller authentication and the header values every answer shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::callers::CallerRegistry;
use crate::credentials::CredentialStore;
use crate::lookup::AnswerCache;
use crate::telemetry::traces::Traces;
use crate::telemetry::{logging, Metrics, ANONYMOUS_CALLER};

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub credentials: Arc<CredentialStore>,
    /// Caller authentication, when `TASKGATE_CALLER_TOKENS_FILE` is set.
    pub callers: Option<Arc<CallerRegistry>>,
    /// The caller label of every request when caller authentication is off (shared, not
    /// allocated per request).
    pub anonymous: Arc<str>,
    pub cache: AnswerCache,
    pub request_timeout: Duration,
    /// How long a caller waits for budget for a task nothing is known about (a long poll: its
    /// wait, if longer).
    pub max_queue_wait: Duration,
    /// `Cache-Control` of final answers, rendered once.
    pub final_cache_control: actix_web::http::header::HeaderValue,
    /// Whether to write an access-log line per request.
    pub access_log: bool,
    /// Where request spans are started (off unless traces are configured).
    pub(crate) traces: Traces,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        metrics: Arc<Metrics>,
        credentials: Arc<CredentialStore>,
        callers: Option<Arc<CallerRegistry>>,
        cache: AnswerCache,
        request_timeout: Duration,
        max_queue_wait: Duration,
        access_log: bool,
    ) -> Self {
        metrics.ready.set(1);
        let final_cache_control = actix_web::http::header::HeaderValue::from_str(&format!(
            "public, max-age={}, immutable",
            cache.policy().final_ttl.as_secs()
        ))
        .expect("digits and ASCII words are a valid header value");
        Self {
            metrics,
            credentials,
            callers,
            anonymous: Arc::from(ANONYMOUS_CALLER),
            cache,
            request_timeout,
            max_queue_wait,
            final_cache_control,
            access_log,
            traces: Traces::off(),
            draining: AtomicBool::new(false),
        }
    }

    /// Brings the gauges that are read rather than counted up to date (before a scrape).
    pub async fn refresh_gauges(&self) {
        let dropped = logging::dropped_lines();
        let counted = self.metrics.log_lines_dropped.get();
        self.metrics
            .log_lines_dropped
            .inc_by(dropped.saturating_sub(counted));
        self.metrics.credentials_expiry.set(
            self.credentials
                .load()
                .seconds_to_expiry(SystemTime::now())
                .unwrap_or(f64::INFINITY),
        );
        self.metrics.ready.set(i64::from(self.readiness().is_ok()));
        self.cache.run_pending_tasks().await;
        self.metrics
            .cache_entries
            .set(i64::try_from(self.cache.entry_count()).unwrap_or(i64::MAX));
        self.metrics
            .cache_weighted_size
            .set(i64::try_from(self.cache.weighted_size()).unwrap_or(i64::MAX));
    }

    /// Ready means: configuration and credentials loaded (or we would not be running) and not
    /// draining. Never asks the upstream: that would spend the account's budget.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: shutting down");
        }
        if self
            .credentials
            .load()
            .seconds_to_expiry(SystemTime::now())
            .is_some_and(|left| left <= 0.0)
        {
            return Err("credentials expired: rotate TASKGATE_CREDENTIALS_FILE");
        }
        Ok(())
    }

    /// Marks the process as leaving: readiness turns 503 at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.ready.set(0);
    }
}

//! `Application`: everything built once at start, the HTTP server, and how it stops.
//!
//! `build` binds the listener (port 0 in tests), builds the shared state (credentials, metrics,
//! budget, lookup) exactly once, and gives each worker its own upstream client (awc is not
//! `Send`). `run_until_stopped` serves until the server is stopped by a signal or a handle.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use super::config::Config;
use super::config_error::ConfigError;
use super::settings::RATE_WINDOW;
use crate::budget::{Budget, Resilience};
use crate::credentials::{self, CredentialStore, Credentials, CvmRole};
use crate::http::{self, AppState, CallerRegistry, CallerTokens};
use crate::lookup::{AnswerBoard, AnswerCache, Attempts, Fetcher, LookupService, WaitService};
use crate::shared::{Peers, Redis};
use crate::support::reload;
use crate::support::{Clock, SystemClock};
use crate::telemetry::traces::{self, ExportHandle, Traces};
use crate::telemetry::{access, Metrics};
use crate::upstream::{tls, DemoUpstream, Endpoint, UpstreamClient, UpstreamTarget};

/// Why taskgate could not start. Each names the setting or resource at fault.
#[derive(Debug)]
pub enum StartupError {
    Config(ConfigError),
    Io(&'static str, std::io::Error),
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for StartupError {}

impl From<ConfigError> for StartupError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    waits: web::Data<WaitService>,
    demo: Option<DemoUpstream>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    /// The trace export thread, when traces are on: flushed last.
    traces: Option<ExportHandle>,
    /// Gives its lease of the shared budget back once nothing more is sent.
    budget: Arc<Budget>,
}

impl Application {
    /// Builds the whole service from a parsed configuration. Must run inside an actix system.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let configured_endpoint = config.validate()?;
        let (credentials, credentials_file) = initial_credentials(&config).await?;
        let callers = config.callers.load()?;
        let demo = start_demo(&config, &credentials)?;
        let endpoint = demo
            .as_ref()
            .map(DemoUpstream::endpoint)
            .unwrap_or(configured_endpoint);
        let target = upstream_target(&config, endpoint)?;

        let metrics = Arc::new(Metrics::new(config.budget.rate_limit));
        let (traces, export) = start_traces(&config, &metrics)?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let credentials = Arc::new(CredentialStore::from_pointee(credentials));
        keep_credentials_fresh(&config, &credentials, credentials_file, &metrics);
        let callers =
            callers.map(|(tokens, path, text)| watch_callers(tokens, path, &text, &metrics));

        let cache = AnswerCache::new(
            config.lookup.cache_capacity as u64,
            config.lookup.cache_policy(),
            Arc::clone(&clock),
        );
        let redis = start_redis(&config, &metrics, &clock)?;
        let budget = Budget::start(
            config.budget.budget_config(),
            redis.clone().map(|redis| (redis, config.lease_terms())),
            Arc::clone(&target.connections),
            Arc::clone(&clock),
            Arc::clone(&metrics),
        );
        let board = Arc::new(AnswerBoard::default());
        // The lease covers the longest one fetch takes before its holder renews it.
        let lease_ttl =
            config.budget.max_queue_wait + config.upstream.upstream_timeout + RATE_WINDOW;
        let peers = redis.map(|redis| Peers::start(redis, lease_ttl, board.clone()));
        let resilience = Arc::new(Resilience::new(
            config.budget.retry_budget_config(),
            config
                .budget
                .breaker_config(config.upstream.upstream_timeout),
            Arc::clone(&metrics),
        ));
        let attempts = Attempts {
            budget: Arc::clone(&budget),
            resilience,
            credentials: Arc::clone(&credentials),
            policy: config.lookup.cache_policy(),
            metrics: Arc::clone(&metrics),
            clock: Arc::clone(&clock),
            traces: traces.clone(),
        };
        let lookup = LookupService::new(
            cache.clone(),
            Fetcher {
                attempts,
                peers: peers.clone(),
            },
            Arc::clone(&board),
            config.lookup.request_timeout,
        );
        let waits = web::Data::new(WaitService::new(
            board,
            lookup.clone(),
            peers,
            config.lookup.wait_config(),
            Arc::clone(&metrics),
        ));
        let mut state = AppState::new(
            Arc::clone(&metrics),
            credentials,
            callers,
            cache,
            config.lookup.request_timeout,
            config.budget.max_queue_wait,
            access::access_log_enabled(config.server.access_log),
        );
        state.traces = traces;
        let state = web::Data::new(state);

        let (server, port) = serve(&config, target, web::Data::new(lookup), &state, &waits)?;
        log::info!(
            "taskgate {} listening on port {port} with {} workers, upstream {}",
            env!("CARGO_PKG_VERSION"),
            config.server.workers(),
            if config.server.demo {
                "embedded demo"
            } else {
                config.upstream.upstream_endpoint.as_str()
            }
        );
        Ok(Self {
            port,
            server,
            state,
            waits,
            demo,
            drain_delay: config.server.drain_delay,
            shutdown_timeout: config.server.shutdown_timeout,
            traces: export,
            budget,
        })
    }

    /// The bound port (useful with `TASKGATE_LISTEN=127.0.0.1:0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then drains: readiness turns 503 at once, the listener
    /// keeps serving for the drain delay (the load balancer's time to notice), then it closes and
    /// in-flight requests get the shutdown timeout to finish; the last spans are sent within
    /// what is left of it.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + 'static,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        let waits = self.waits.clone();
        let drain_delay = self.drain_delay;
        // When the listener closed: the shutdown timeout counts from then, the trace flush too.
        let closed_at = std::rc::Rc::new(std::cell::Cell::new(None));
        let closing = std::rc::Rc::clone(&closed_at);
        actix_rt::spawn(async move {
            shutdown.await;
            state.start_draining();
            // Long polls answer now with what they have: draining never waits for them.
            waits.shut_down();
            log::info!(
                "shutdown requested: /readyz now answers 503; serving for {} ms more",
                drain_delay.as_millis()
            );
            tokio::time::sleep(drain_delay).await;
            log::info!("drain delay over: closing the listener, finishing in-flight requests");
            closing.set(Some(tokio::time::Instant::now()));
            handle.stop(true).await;
        });
        let result = self.server.await;
        if let Some(export) = self.traces {
            let now = tokio::time::Instant::now();
            let deadline = closed_at.get().unwrap_or(now) + self.shutdown_timeout;
            export
                .flush(deadline.max(now + Duration::from_millis(250)))
                .await;
        }
        self.budget.leave().await;
        log::info!("stopped");
        if let Some(demo) = &self.demo {
            demo.stop().await;
        }
        result
    }
}

/// Traces, when an OTLP endpoint is configured: the tracer and its export thread. Off, nothing
/// runs and every span is empty.
fn start_traces(
    config: &Config,
    metrics: &Metrics,
) -> Result<(Traces, Option<ExportHandle>), StartupError> {
    let Some(trace_config) = config.traces.trace_config()? else {
        return Ok((Traces::off(), None));
    };
    let (traces, export) = traces::start(&trace_config, metrics.traces.clone())
        .map_err(|e| StartupError::Io("starting the trace export thread", e))?;
    log::info!(
        "traces: exporting OTLP/HTTP to {} (sampler {})",
        trace_config.url.split('?').next().unwrap_or_default(),
        config.traces.traces_sampler.trim()
    );
    Ok((traces, Some(export)))
}

/// The credentials to start with: the CVM role's (fetched now, failing the start if it cannot),
/// or those of the credential settings, with the file they came from.
async fn initial_credentials(
    config: &Config,
) -> Result<(Credentials, Option<(PathBuf, String)>), ConfigError> {
    match config.credentials.cvm_role() {
        Some(role) => {
            let fetched = role
                .fetch(&CvmRole::client())
                .await
                .map_err(|message| ConfigError::new("TASKGATE_CVM_ROLE", message))?;
            Ok((fetched, None))
        }
        None => config.credentials.load(config.server.demo),
    }
}

/// The embedded simulated upstream, in demo mode.
fn start_demo(
    config: &Config,
    credentials: &Credentials,
) -> Result<Option<DemoUpstream>, StartupError> {
    if !config.server.demo {
        return Ok(None);
    }
    let demo = DemoUpstream::start(credentials.clone())
        .map_err(|e| StartupError::Io("starting the demo upstream", e))?;
    log::warn!(
        "demo mode: serving from an embedded simulated SSM upstream at {} with throwaway \
         credentials; no call leaves this machine",
        demo.endpoint().url
    );
    Ok(Some(demo))
}

fn upstream_target(
    config: &Config,
    endpoint: Endpoint,
) -> Result<Arc<UpstreamTarget>, ConfigError> {
    let settings = &config.upstream;
    let tls = tls::client_config(settings.upstream_ca_file.as_deref())
        .map_err(|message| ConfigError::new("TASKGATE_UPSTREAM_CA_FILE", message))?;
    Ok(Arc::new(UpstreamTarget {
        endpoint,
        region: settings.region().map(str::to_owned),
        attempt_timeout: settings.upstream_timeout,
        connect_timeout: settings.connect_timeout,
        tls,
        connections: Arc::default(),
    }))
}

/// Re-reads the credentials file on change, or renews the CVM role's before they expire.
fn keep_credentials_fresh(
    config: &Config,
    store: &Arc<CredentialStore>,
    file: Option<(PathBuf, String)>,
    metrics: &Metrics,
) {
    if let Some((path, text)) = file {
        let store = Arc::clone(store);
        reload::watch_parsed(
            path,
            &text,
            "credentials",
            metrics.reload_counters("credentials"),
            credentials::profile::parse,
            move |next| {
                log::info!("credentials: now signing with secret id {}", next.secret_id);
                store.store(Arc::new(next));
            },
        );
    }
    if let Some(role) = config.credentials.cvm_role() {
        role.keep_fresh(Arc::clone(store), metrics.reload_counters("cvm_role"));
    }
}

/// The callers of the tokens file, kept in force and re-read on change; each caller's series is
/// exported from the start.
fn watch_callers(
    tokens: CallerTokens,
    path: PathBuf,
    text: &str,
    metrics: &Arc<Metrics>,
) -> Arc<CallerRegistry> {
    for name in tokens.names() {
        metrics.add_caller(name);
    }
    let registry = Arc::new(CallerRegistry::from_pointee(tokens));
    let (in_force, labels) = (Arc::clone(&registry), Arc::clone(metrics));
    reload::watch_parsed(
        path,
        text,
        "caller_tokens",
        metrics.reload_counters("caller_tokens"),
        CallerTokens::parse,
        move |next| {
            for name in next.names() {
                labels.add_caller(name);
            }
            in_force.store(Arc::new(next));
        },
    );
    registry
}

/// Shared mode's connection, when Redis is configured.
fn start_redis(
    config: &Config,
    metrics: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> Result<Option<Arc<Redis>>, ConfigError> {
    let Some(shared) = config.shared.shared_config()? else {
        return Ok(None);
    };
    if config.shared.expected_replicas.is_some() {
        log::warn!(
            "TASKGATE_EXPECTED_REPLICAS is ignored: the shared budget is leased to the replicas \
             present, whatever their number"
        );
    }
    let url = shared.url.clone();
    let redis = Redis::start(shared, Arc::clone(metrics), Arc::clone(clock))
        .map_err(|message| ConfigError::new("TASKGATE_REDIS_URL", message))?;
    log::info!(
        "shared mode: budget, cache and lookups shared through {url:?} (prefix {:?})",
        config.shared.redis_prefix
    );
    Ok(Some(redis))
}

/// Binds the listener and starts the HTTP server with its workers; returns it and its port.
fn serve(
    config: &Config,
    target: Arc<UpstreamTarget>,
    lookup: web::Data<LookupService>,
    state: &web::Data<AppState>,
    waits: &web::Data<WaitService>,
) -> Result<(Server, u16), StartupError> {
    let settings = &config.server;
    let listener = TcpListener::bind(settings.listen)
        .map_err(|e| StartupError::Io("binding TASKGATE_LISTEN", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| StartupError::Io("reading the bound address", e))?
        .port();
    let workers = settings.workers();
    let (state, waits) = (state.clone(), waits.clone());
    let server = HttpServer::new(move || {
        let client = web::Data::new(UpstreamClient::new(Arc::clone(&target)));
        App::new()
            .app_data(state.clone())
            .app_data(lookup.clone())
            .app_data(waits.clone())
            .app_data(client)
            .wrap(from_fn(http::observe))
            .configure(http::configure)
            .default_service(web::to(http::not_found))
    })
    .workers(workers)
    // Signals are handled by `run_until_stopped`, which drains before stopping.
    .disable_signals()
    .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
    .max_connections((settings.max_connections / workers).max(1))
    .client_request_timeout(settings.client_timeout)
    .listen(listener)
    .map_err(|e| StartupError::Io("listening on TASKGATE_LISTEN", e))?
    .run();
    Ok((server, port))
}

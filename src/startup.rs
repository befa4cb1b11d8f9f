//! `Application`: everything built once at start, the HTTP server, and how it stops.
//!
//! `build` binds the listener (port 0 in tests), builds the shared state (credentials, metrics,
//! lookup) exactly once, and gives each worker its own upstream client (awc is not `Send`).
//! `run_until_stopped` serves until the server is stopped by a signal or a handle.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::board::AnswerBoard;
use crate::budget::{Budget, BudgetConfig};
use crate::cache::{AnswerCache, CachePolicy};
use crate::callers::{CallerRegistry, CallerTokens};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::credentials::CredentialStore;
use crate::cvm_role::CvmRole;
use crate::demo::DemoUpstream;
use crate::lookup::{LookupParts, LookupService};
use crate::observe;
use crate::reload;
use crate::resilience::{BreakerConfig, Resilience, RetryBudgetConfig};
use crate::routes;
use crate::shared::flight::Flight;
use crate::shared::{Redis, SharedConfig};
use crate::state::AppState;
use crate::upstream::{tls, UpstreamClient, UpstreamTarget};
use crate::waits::{WaitConfig, WaitService};

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
}

impl Application {
    /// Builds the whole service from a parsed configuration. Must run inside an actix system.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let configured_endpoint = config.validate()?;
        let cvm_role = config.cvm_role();
        let (credentials, credentials_file) = match &cvm_role {
            Some(role) => {
                let fetched =
                    role.fetch(&CvmRole::client())
                        .await
                        .map_err(|message| ConfigError {
                            setting: "TASKGATE_CVM_ROLE".into(),
                            message,
                        })?;
                (fetched, None)
            }
            None => config.credentials()?,
        };
        let callers = match &config.caller_tokens_file {
            Some(path) => {
                let setting = |message: String| ConfigError {
                    setting: "TASKGATE_CALLER_TOKENS_FILE".into(),
                    message,
                };
                let text = std::fs::read_to_string(path)
                    .map_err(|e| setting(format!("cannot read {}: {e}", path.display())))?;
                let tokens = CallerTokens::parse(&text)
                    .map_err(|e| setting(format!("{}: {e}", path.display())))?;
                Some((Arc::new(CallerRegistry::new(tokens)), text))
            }
            None => None,
        };

        let demo = if config.demo {
            let demo = DemoUpstream::start(credentials.clone())
                .map_err(|e| StartupError::Io("starting the demo upstream", e))?;
            log::warn!(
                "demo mode: serving from an embedded simulated SSM upstream at {} with \
                 throwaway credentials; no call leaves this machine",
                demo.endpoint().url
            );
            Some(demo)
        } else {
            None
        };
        let endpoint = demo
            .as_ref()
            .map(DemoUpstream::endpoint)
            .unwrap_or(configured_endpoint);

        let tls = tls::client_config(config.upstream_ca_file.as_deref()).map_err(|message| {
            ConfigError {
                setting: "TASKGATE_UPSTREAM_CA_FILE".into(),
                message,
            }
        })?;
        let target = Arc::new(UpstreamTarget {
            endpoint,
            region: config.effective_region().map(str::to_owned),
            attempt_timeout: config.upstream_timeout,
            connect_timeout: config.connect_timeout,
            tls,
        });

        let metrics = Arc::new(crate::metrics::Metrics::new(config.rate_limit));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let credentials = Arc::new(CredentialStore::new(credentials));
        if let Some((path, text)) = credentials_file {
            let store = Arc::clone(&credentials);
            reload::watch_parsed(
                path,
                &text,
                "credentials",
                Arc::clone(&metrics),
                crate::credentials_file::parse,
                move |next| {
                    log::info!("credentials: now signing with secret id {}", next.secret_id);
                    store.replace(next);
                },
            );
        }
        if let Some(role) = cvm_role {
            role.keep_fresh(Arc::clone(&credentials), Arc::clone(&metrics));
        }
        let callers = callers.map(|(registry, text)| {
            for name in registry.current().names() {
                metrics.caller_requests.with_label_values(&[name]);
            }
            if let Some(path) = &config.caller_tokens_file {
                let (in_force, labels) = (Arc::clone(&registry), Arc::clone(&metrics));
                reload::watch_parsed(
                    path.clone(),
                    &text,
                    "caller_tokens",
                    Arc::clone(&metrics),
                    CallerTokens::parse,
                    move |next| {
                        for name in next.names() {
                            labels.caller_requests.with_label_values(&[name]);
                        }
                        in_force.replace(next);
                    },
                );
            }
            registry
        });
        let cache = AnswerCache::new(
            config.cache_capacity as u64,
            CachePolicy {
                final_ttl: config.final_ttl,
                processing_ttl: config.processing_ttl,
                not_found_ttl: config.not_found_ttl,
                stale_if_error: config.stale_if_error,
            },
        );
        let window = Duration::from_secs(1);
        let redis = match &config.redis_url {
            Some(url) => {
                let redis = Redis::start(
                    SharedConfig {
                        url: url.clone(),
                        prefix: config.redis_prefix.clone(),
                        op_timeout: config.redis_timeout,
                        expected_replicas: config.expected_replicas,
                        quiet_for: window + config.rate_window_margin,
                    },
                    Arc::clone(&metrics),
                    Arc::clone(&clock),
                )
                .map_err(|message| ConfigError {
                    setting: "TASKGATE_REDIS_URL".into(),
                    message,
                })?;
                log::info!(
                    "shared mode: budget, cache and lookups shared through {url:?} (prefix {:?})",
                    config.redis_prefix
                );
                Some(redis)
            }
            None => None,
        };
        let budget = Budget::start(
            BudgetConfig {
                limit: config.rate_limit,
                window,
                margin: config.rate_window_margin,
                max_queue: config.max_queue,
                max_queue_wait: config.max_queue_wait,
            },
            config.upstream_timeout,
            redis.clone(),
            Arc::clone(&clock),
            Arc::clone(&metrics),
        );
        // The lease covers the longest one fetch takes before its holder renews it.
        let board = Arc::new(AnswerBoard::default());
        let flight = redis.map(|redis| {
            Flight::start(
                redis,
                config.max_queue_wait + config.upstream_timeout + window,
                Arc::clone(&board),
            )
        });
        let resilience = Arc::new(Resilience::new(
            RetryBudgetConfig {
                ratio: config.retry_budget,
                floor_per_second: 1,
                window: Duration::from_secs(10),
            },
            BreakerConfig {
                failures: config.breaker_failures,
                open_for: config.breaker_open,
                max_open_for: Duration::from_secs(30),
                probe_timeout: config.max_queue_wait + config.upstream_timeout,
            },
            Arc::clone(&metrics),
        ));
        let lookup = LookupService::new(LookupParts {
            cache: cache.clone(),
            budget,
            resilience,
            flight: flight.clone(),
            board: Arc::clone(&board),
            credentials: Arc::clone(&credentials),
            metrics: Arc::clone(&metrics),
            clock: Arc::clone(&clock),
            fetch_timeout: config.request_timeout,
        });
        let waits = web::Data::new(WaitService::new(
            board,
            lookup.clone(),
            flight,
            WaitConfig {
                max_wait: config.max_wait,
                max_waiters: config.max_waiters,
                interval: config.processing_ttl.max(Duration::from_millis(100)),
                poll_timeout: config.request_timeout,
            },
            Arc::clone(&metrics),
        ));
        let lookup = web::Data::new(lookup);
        let state = web::Data::new(AppState::new(
            Arc::clone(&metrics),
            credentials,
            callers,
            cache,
            config.request_timeout,
            crate::logging::access_log_enabled(config.access_log),
        ));

        let listener = TcpListener::bind(config.listen)
            .map_err(|e| StartupError::Io("binding TASKGATE_LISTEN", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| StartupError::Io("reading the bound address", e))?
            .port();
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));

        let server_state = state.clone();
        let server_waits = waits.clone();
        let server = HttpServer::new(move || {
            let client = web::Data::new(UpstreamClient::new(Arc::clone(&target)));
            App::new()
                .app_data(server_state.clone())
                .app_data(lookup.clone())
                .app_data(server_waits.clone())
                .app_data(client)
                .wrap(from_fn(observe::observe))
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
        })
        .workers(workers)
        // Signals are handled by `run_until_stopped`, which drains before stopping.
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs().max(1))
        .max_connections((config.max_connections / workers).max(1))
        .client_request_timeout(config.client_timeout)
        .listen(listener)
        .map_err(|e| StartupError::Io("listening on TASKGATE_LISTEN", e))?
        .run();

        log::info!(
            "taskgate {} listening on port {port} with {workers} workers, upstream {}",
            env!("CARGO_PKG_VERSION"),
            if config.demo {
                "embedded demo"
            } else {
                config.upstream_endpoint.as_str()
            }
        );
        Ok(Self {
            port,
            server,
            state,
            waits,
            demo,
            drain_delay: config.drain_delay,
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
    /// in-flight requests get the shutdown timeout to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + 'static,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        let waits = self.waits.clone();
        let drain_delay = self.drain_delay;
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
            handle.stop(true).await;
        });
        let result = self.server.await;
        log::info!("stopped");
        if let Some(demo) = &self.demo {
            demo.stop().await;
        }
        result
    }
}

//! Every setting taskgate reads, grouped by the part of the service it configures. Each group is
//! a flag and an environment variable per setting (clap), and builds its part's own settings, so
//! the rest of the crate never sees a flag. `taskgate --help` lists them by group.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::config_error::ConfigError;
use super::parse::{
    parse_count, parse_duration, parse_positive_duration, parse_rate_limit, parse_ratio,
};
use crate::budget::{BreakerConfig, BudgetConfig, RetryBudgetConfig};
use crate::credentials::{self, Credentials, CvmRole, SecretId, SecretKey, SecurityToken};
use crate::http::CallerTokens;
use crate::lookup::{CachePolicy, WaitConfig};
use crate::shared::{RedisUrl, SharedConfig};
use crate::telemetry::LogFormat;
use crate::upstream::{Endpoint, DEFAULT_ENDPOINT};

/// The sliding window the account's limit is counted in.
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(1);

/// How taskgate serves HTTP, logs, and stops.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Serving")]
pub struct ServerSettings {
    /// Address and port to serve HTTP on.
    #[arg(long, env = "TASKGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// HTTP worker threads (default: one per CPU core).
    #[arg(long, env = "TASKGATE_WORKERS", value_parser = parse_count)]
    pub workers: Option<usize>,

    /// Open client connections at most (all workers together); more wait in the backlog.
    #[arg(long, env = "TASKGATE_MAX_CONNECTIONS", default_value = "25000", value_parser = parse_count)]
    pub max_connections: usize,

    /// Time a client has to send its request head after connecting (slow clients are cut).
    #[arg(long, env = "TASKGATE_CLIENT_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub client_timeout: Duration,

    /// After SIGTERM/SIGINT: how long /readyz answers 503 while the listener still serves, so the
    /// load balancer stops sending traffic before the port closes.
    #[arg(long, env = "TASKGATE_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After the drain delay: how long in-flight requests get to finish before the process exits.
    #[arg(long, env = "TASKGATE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log line format: text for people, json for log shippers.
    #[arg(long, env = "TASKGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Write one access-log line per request (target taskgate::access).
    #[arg(long, env = "TASKGATE_ACCESS_LOG", default_value = "true", action = clap::ArgAction::Set)]
    pub access_log: bool,

    /// Run against the embedded simulated SSM upstream with throwaway credentials.
    #[arg(long, env = "TASKGATE_DEMO")]
    pub demo: bool,
}

impl ServerSettings {
    /// Worker threads: as configured, else one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

/// Where the upstream is and how long one call to it may take.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Upstream")]
pub struct UpstreamSettings {
    /// Tencent Cloud API endpoint, a full URL: the international site by default;
    /// https://ssm.tencentcloudapi.com for the China site, https://ssm.ap-guangzhou.tencentcloudapi.com
    /// for a regional host.
    #[arg(long, env = "TASKGATE_UPSTREAM_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub upstream_endpoint: String,

    /// Region sent as X-TC-Region (falls back to TENCENTCLOUD_REGION; none when both are unset).
    #[arg(long, env = "TASKGATE_REGION")]
    pub region: Option<String>,

    /// Region as the Tencent Cloud tools name it; used when TASKGATE_REGION is unset.
    #[arg(long = "tencentcloud-region", env = "TENCENTCLOUD_REGION")]
    pub tencentcloud_region: Option<String>,

    /// Time allowed for one upstream attempt, from connecting to the last byte of the answer.
    #[arg(long, env = "TASKGATE_UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub upstream_timeout: Duration,

    /// Time allowed to open a connection to the upstream.
    #[arg(long, env = "TASKGATE_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Extra PEM bundle of CA certificates trusted for the upstream, added to the built-in roots
    /// (for corporate TLS proxies and loopback tests): the CA that issued the upstream's
    /// certificate, not the certificate itself. Verification is never switched off.
    #[arg(long, env = "TASKGATE_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
}

impl UpstreamSettings {
    /// The region to send, if any: TASKGATE_REGION, else TENCENTCLOUD_REGION.
    pub fn region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or(self.tencentcloud_region.as_deref())
            .map(str::trim)
            .filter(|r| !r.is_empty())
    }

    /// The configured endpoint, checked along with the region and the CA file.
    pub fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let endpoint = Endpoint::parse(&self.upstream_endpoint)
            .map_err(|message| ConfigError::new("TASKGATE_UPSTREAM_ENDPOINT", message))?;
        if let Some(region) = self.region() {
            if !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(ConfigError::new(
                    "TASKGATE_REGION",
                    format!("{region:?} is not a region name like ap-guangzhou"),
                ));
            }
        }
        if let Some(path) = &self.upstream_ca_file {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "TASKGATE_UPSTREAM_CA_FILE",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        Ok(endpoint)
    }
}

/// How long answers are kept and served, and how long callers may wait.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Lookups and cache")]
pub struct LookupSettings {
    /// Overall deadline of one lookup: budget waiting, upstream attempts and retries all fit in it.
    /// Callers may shorten it with the X-Request-Timeout header, never lengthen it.
    #[arg(long, env = "TASKGATE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// How long a processing (TaskStatus 0) answer is reused before asking the upstream again.
    #[arg(long, env = "TASKGATE_PROCESSING_TTL", default_value = "1s", value_parser = parse_duration)]
    pub processing_ttl: Duration,

    /// How long a ResourceNotFound answer is remembered (0 disables).
    #[arg(long, env = "TASKGATE_NOT_FOUND_TTL", default_value = "2s", value_parser = parse_duration)]
    pub not_found_ttl: Duration,

    /// How long a final (succeeded or failed) answer is kept; it never changes, so only memory
    /// pressure should evict it earlier.
    #[arg(long, env = "TASKGATE_FINAL_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub final_ttl: Duration,

    /// How long the last known status of a processing task may be served when its refresh fails
    /// (stale-if-error; 0 disables).
    #[arg(long, env = "TASKGATE_STALE_IF_ERROR", default_value = "5m", value_parser = parse_duration)]
    pub stale_if_error: Duration,

    /// Memory bound of the answer cache in bytes: what the cached answers really occupy.
    #[arg(long, env = "TASKGATE_CACHE_CAPACITY", default_value = "67108864", value_parser = parse_count)]
    pub cache_capacity: usize,

    /// Longest long poll (`?wait=` or `Prefer: wait`); longer asks are capped to it.
    #[arg(long, env = "TASKGATE_MAX_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// Long polls held at once; beyond it a request is answered at once with the current status.
    #[arg(long, env = "TASKGATE_MAX_WAITERS", default_value = "10000", value_parser = parse_count)]
    pub max_waiters: usize,
}

impl LookupSettings {
    pub fn cache_policy(&self) -> CachePolicy {
        CachePolicy {
            final_ttl: self.final_ttl,
            processing_ttl: self.processing_ttl,
            not_found_ttl: self.not_found_ttl,
            stale_if_error: self.stale_if_error,
        }
    }

    pub fn wait_config(&self) -> WaitConfig {
        WaitConfig {
            max_wait: self.max_wait,
            max_waiters: self.max_waiters,
            interval: self.processing_ttl.max(Duration::from_millis(100)),
            poll_timeout: self.request_timeout,
        }
    }
}

/// The account's budget and the guards against a failing upstream.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Budget and resilience")]
pub struct BudgetSettings {
    /// Upstream calls allowed in any sliding one-second window (the account's limit is 20/s).
    #[arg(long, env = "TASKGATE_RATE_LIMIT", default_value = "20", value_parser = parse_rate_limit)]
    pub rate_limit: u32,

    /// An upstream call counts against the window for one window after its send plus what its
    /// answer took beyond the fastest recent call's, plus this margin: how much faster a call's
    /// way out may be than the fastest call's (the latency every call pays cancels out where
    /// Tencent counts arrivals). A call while a connection was opened counts until one window
    /// after its answer.
    #[arg(long, env = "TASKGATE_RATE_WINDOW_MARGIN", default_value = "5ms", value_parser = parse_duration)]
    pub rate_window_margin: Duration,

    /// Lookups that may wait for budget at once; beyond it, 503 with Retry-After at once.
    #[arg(long, env = "TASKGATE_MAX_QUEUE", default_value = "1000", value_parser = parse_count)]
    pub max_queue: usize,

    /// Longest wait for budget before a lookup is answered 503 with Retry-After.
    #[arg(long, env = "TASKGATE_MAX_QUEUE_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub max_queue_wait: Duration,

    /// Retries of transient upstream failures as a share of calls over 10 s (a floor of 1 retry
    /// per second always remains, so a lone request is still retried).
    #[arg(long, env = "TASKGATE_RETRY_BUDGET", default_value = "0.1", value_parser = parse_ratio)]
    pub retry_budget: f64,

    /// Consecutive transient upstream failures that open the circuit breaker.
    #[arg(long, env = "TASKGATE_BREAKER_FAILURES", default_value = "5", value_parser = parse_rate_limit)]
    pub breaker_failures: u32,

    /// How long the circuit stays open before one probe call (doubling on failure, up to 30s).
    #[arg(long, env = "TASKGATE_BREAKER_OPEN", default_value = "5s", value_parser = parse_positive_duration)]
    pub breaker_open: Duration,
}

impl BudgetSettings {
    pub fn budget_config(&self) -> BudgetConfig {
        BudgetConfig {
            limit: self.rate_limit,
            window: RATE_WINDOW,
            margin: self.rate_window_margin,
            max_queue: self.max_queue,
            max_queue_wait: self.max_queue_wait,
        }
    }

    /// The window plus its margin: the longest a slot counts after its answer.
    pub fn cooling(&self) -> Duration {
        RATE_WINDOW + self.rate_window_margin
    }

    pub fn retry_budget_config(&self) -> RetryBudgetConfig {
        RetryBudgetConfig {
            ratio: self.retry_budget,
            floor_per_second: 1,
            window: Duration::from_secs(10),
        }
    }

    /// The breaker; a probe may take as long as one budget wait and one attempt.
    pub fn breaker_config(&self, attempt_timeout: Duration) -> BreakerConfig {
        BreakerConfig {
            failures: self.breaker_failures,
            open_for: self.breaker_open,
            max_open_for: Duration::from_secs(30),
            probe_timeout: self.max_queue_wait + attempt_timeout,
        }
    }
}

/// Shared mode: replicas sharing budget, cache and lookups through Redis.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Shared mode (Redis)")]
pub struct SharedSettings {
    /// Redis for shared mode (redis:// or rediss:// for TLS; a password may be in the URL).
    /// Without it, taskgate is self-contained.
    #[arg(long, env = "TASKGATE_REDIS_URL", hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(RedisUrl(s.to_string())))]
    pub redis_url: Option<RedisUrl>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "TASKGATE_REDIS_PREFIX", default_value = "taskgate:")]
    pub redis_prefix: String,

    /// Longest wait for one Redis operation before the replica degrades to local mode.
    #[arg(long, env = "TASKGATE_REDIS_TIMEOUT", default_value = "250ms", value_parser = parse_positive_duration)]
    pub redis_timeout: Duration,

    /// No longer used: the shared budget is leased to the replicas present, whatever their
    /// number. Still accepted (and logged as ignored) so old configurations start.
    #[arg(long, env = "TASKGATE_EXPECTED_REPLICAS", hide = true)]
    pub expected_replicas: Option<String>,
}

impl SharedSettings {
    /// Shared mode's settings, when Redis is configured (checked first).
    pub fn shared_config(&self) -> Result<Option<SharedConfig>, ConfigError> {
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "TASKGATE_REDIS_PREFIX",
                "must be non-empty and without spaces",
            ));
        }
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let setting = |message: String| ConfigError::new("TASKGATE_REDIS_URL", message);
        if !(url.0.starts_with("redis://") || url.0.starts_with("rediss://")) {
            return Err(setting(format!(
                "{url:?} must start with redis:// or rediss://"
            )));
        }
        redis::Client::open(url.0.as_str())
            .map_err(|e| setting(format!("{url:?} is not a usable Redis URL: {e}")))?;
        Ok(Some(SharedConfig {
            url: url.clone(),
            prefix: self.redis_prefix.clone(),
            op_timeout: self.redis_timeout,
        }))
    }
}

/// Where taskgate's Tencent Cloud credentials come from.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Credentials")]
pub struct CredentialSettings {
    /// Credentials file in the Tencent profile format ([default] secret_id, secret_key, optional
    /// token and expires_at), re-read when it changes. Takes precedence over TENCENTCLOUD_*.
    #[arg(long, env = "TASKGATE_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,

    /// The Tencent SDKs' profile file, read (and watched) when neither TASKGATE_CREDENTIALS_FILE
    /// nor TENCENTCLOUD_SECRET_ID / _KEY is set. Without it, ~/.tencentcloud/credentials is used
    /// when it exists, as the SDKs do.
    #[arg(
        long = "tencentcloud-credentials-file",
        env = "TENCENTCLOUD_CREDENTIALS_FILE"
    )]
    pub sdk_credentials_file: Option<PathBuf>,

    /// The home folder, only to find ~/.tencentcloud/credentials.
    #[arg(long = "home", env = "HOME", hide = true)]
    pub home: Option<PathBuf>,

    /// Temporary credentials of the CVM instance role, renewed before they expire: the role's
    /// name, or `auto` for the role bound to this instance. Use it instead of any other
    /// credentials setting.
    #[arg(long, env = "TASKGATE_CVM_ROLE")]
    pub cvm_role: Option<String>,

    /// The instance metadata service that hands out the CVM role's credentials.
    #[arg(long, env = "TASKGATE_METADATA_ENDPOINT", default_value = credentials::cvm_role::DEFAULT_METADATA_ENDPOINT)]
    pub metadata_endpoint: String,

    /// Tencent Cloud SecretId (prefer the environment: flags show in the process list).
    #[arg(long, env = "TENCENTCLOUD_SECRET_ID", hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(SecretId::new(s)))]
    pub secret_id: Option<SecretId>,

    /// Tencent Cloud SecretKey (prefer the environment: flags show in the process list).
    #[arg(long, env = "TENCENTCLOUD_SECRET_KEY", hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(SecretKey::new(s)))]
    pub secret_key: Option<SecretKey>,

    /// Token of temporary credentials (prefer the environment).
    #[arg(
        long,
        env = "TENCENTCLOUD_SECURITY_TOKEN",
        hide_env_values = true,
        value_parser = |s: &str| Ok::<_, String>(SecurityToken::new(s))
    )]
    pub security_token: Option<SecurityToken>,
}

/// Credentials read from a file, with the file and what it held (to watch it for changes).
pub(super) type LoadedCredentials = (Credentials, Option<(PathBuf, String)>);

impl CredentialSettings {
    /// Checks the CVM role setting against the others (`demo` is one more source).
    pub fn validate(&self, demo: bool) -> Result<(), ConfigError> {
        let Some(role) = &self.cvm_role else {
            return Ok(());
        };
        let setting = |message: &str| ConfigError::new("TASKGATE_CVM_ROLE", message);
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b);
        if role.is_empty() || role.len() > 128 || !role.bytes().all(allowed) {
            return Err(setting(
                "must be a CAM role name, or auto for the role bound to this instance",
            ));
        }
        if demo
            || self.credentials_file.is_some()
            || self.secret_id.is_some()
            || self.secret_key.is_some()
        {
            return Err(setting(
                "is one source of credentials; unset TASKGATE_CREDENTIALS_FILE, \
                 TENCENTCLOUD_SECRET_ID / _KEY and TASKGATE_DEMO, or this",
            ));
        }
        if !(self.metadata_endpoint.starts_with("http://")
            || self.metadata_endpoint.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "TASKGATE_METADATA_ENDPOINT",
                format!(
                    "{:?} must start with http:// or https://",
                    self.metadata_endpoint
                ),
            ));
        }
        Ok(())
    }

    /// The CVM role to take temporary credentials from, when one is configured.
    pub fn cvm_role(&self) -> Option<CvmRole> {
        self.cvm_role
            .as_deref()
            .map(|role| CvmRole::new(&self.metadata_endpoint, role))
    }

    /// The credentials file in use, and the setting that chose it: TASKGATE_CREDENTIALS_FILE;
    /// else, when TENCENTCLOUD_SECRET_ID and _KEY are both unset, the SDKs' profile file
    /// (TENCENTCLOUD_CREDENTIALS_FILE, or ~/.tencentcloud/credentials when it exists).
    pub fn file_in_use(&self, demo: bool) -> Option<(PathBuf, &'static str)> {
        if let Some(path) = &self.credentials_file {
            return Some((path.clone(), "TASKGATE_CREDENTIALS_FILE"));
        }
        if demo || self.cvm_role.is_some() || self.secret_id.is_some() || self.secret_key.is_some()
        {
            return None;
        }
        if let Some(path) = &self.sdk_credentials_file {
            return Some((path.clone(), "TENCENTCLOUD_CREDENTIALS_FILE"));
        }
        let profile = self.home.as_ref()?.join(".tencentcloud/credentials");
        profile
            .is_file()
            .then_some((profile, "~/.tencentcloud/credentials"))
    }

    /// The credentials to sign with, and the file they came from with its contents; demo mode
    /// makes throwaway ones. (The CVM role is fetched at start instead.)
    pub fn load(&self, demo: bool) -> Result<LoadedCredentials, ConfigError> {
        if demo {
            return Ok((Credentials::generate_demo(), None));
        }
        if let Some((path, setting_name)) = self.file_in_use(demo) {
            let text = read_setting_file(setting_name, &path)?;
            let credentials = credentials::profile::parse(&text)
                .map_err(|e| ConfigError::new(setting_name, format!("{}: {e}", path.display())))?;
            return Ok((credentials, Some((path, text))));
        }
        let credentials = Credentials::from_parts(
            self.secret_id.as_ref().map(SecretId::expose),
            self.secret_key.as_ref().map(SecretKey::expose),
            self.security_token.as_ref().map(SecurityToken::expose),
        )?;
        Ok((credentials, None))
    }
}

/// Who may call taskgate.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Callers")]
pub struct CallerSettings {
    /// Callers allowed to look up tasks, one `<caller-name> <token>` per line; re-read when it
    /// changes. Without it, /tasks is open to anyone who can reach taskgate.
    #[arg(long, env = "TASKGATE_CALLER_TOKENS_FILE")]
    pub caller_tokens_file: Option<PathBuf>,
}

impl CallerSettings {
    /// The tokens file's callers with its path and contents (to watch it), when one is set.
    pub fn load(&self) -> Result<Option<(CallerTokens, PathBuf, String)>, ConfigError> {
        let Some(path) = &self.caller_tokens_file else {
            return Ok(None);
        };
        let setting = "TASKGATE_CALLER_TOKENS_FILE";
        let text = read_setting_file(setting, path)?;
        let tokens = CallerTokens::parse(&text)
            .map_err(|e| ConfigError::new(setting, format!("{}: {e}", path.display())))?;
        Ok(Some((tokens, path.clone(), text)))
    }
}

/// Reads a file a setting names; the error names the setting and the file.
fn read_setting_file(setting: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(setting, format!("cannot read {}: {e}", path.display())))
}

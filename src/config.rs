//! Configuration, parsed once at start from flags and environment variables (clap).
//!
//! Every setting is an environment variable and a flag; `taskgate --help` lists them with their
//! defaults. A bad value stops the start with a message naming the variable, never later in a
//! request. Secrets are read here but never echoed: clap is told to hide their values in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::credentials::{Credentials, CredentialsError, SecretId, SecretKey, SecurityToken};
use crate::logging::LogFormat;
use crate::shared::RedisUrl;

/// A duration written like `5s`, `750ms` or `1m`, as operators write them.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write durations like 5s, 750ms or 2m)"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

fn parse_rate_limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err("must be a whole number of calls per second from 1 to 10000".into()),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("must be a number from 0 to 1, such as 0.1".into()),
    }
}

fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

/// Everything taskgate can be told. Field docs are the `--help` text.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "taskgate",
    version,
    args_override_self = true,
    about = "HTTP gateway for Tencent Cloud SSM DescribeAsyncRequestInfo: signs, caches, \
             coalesces and rate-limits task lookups",
    after_help = "Credentials are read as the Tencent Cloud tools read them: TENCENTCLOUD_SECRET_ID, \
                  TENCENTCLOUD_SECRET_KEY and, for temporary credentials, TENCENTCLOUD_SECURITY_TOKEN. \
                  Run with --demo to try taskgate without an account."
)]
pub struct Config {
    /// Address and port to serve HTTP on.
    #[arg(long, env = "TASKGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Tencent Cloud API endpoint, a full URL (https://ssm.ap-guangzhou.tencentcloudapi.com for a
    /// regional host, https://ssm.intl.tencentcloudapi.com for the international site).
    #[arg(
        long,
        env = "TASKGATE_UPSTREAM_ENDPOINT",
        default_value = "https://ssm.tencentcloudapi.com"
    )]
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

    /// Overall deadline of one lookup: budget waiting, upstream attempts and retries all fit in it.
    /// Callers may shorten it with the X-Request-Timeout header, never lengthen it.
    #[arg(long, env = "TASKGATE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// Extra PEM bundle of CA certificates trusted for the upstream, added to the built-in roots
    /// (for corporate TLS proxies and loopback tests). Verification is never switched off.
    #[arg(long, env = "TASKGATE_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// HTTP worker threads (default: one per CPU core).
    #[arg(long, env = "TASKGATE_WORKERS", value_parser = parse_count)]
    pub workers: Option<usize>,

    /// Upstream calls allowed in any sliding one-second window (the account's limit is 20/s).
    #[arg(long, env = "TASKGATE_RATE_LIMIT", default_value = "20", value_parser = parse_rate_limit)]
    pub rate_limit: u32,

    /// Extra time an upstream call keeps counting against the window after its answer arrives,
    /// so the window holds where Tencent counts calls, not where taskgate sends them.
    #[arg(long, env = "TASKGATE_RATE_WINDOW_MARGIN", default_value = "50ms", value_parser = parse_duration)]
    pub rate_window_margin: Duration,

    /// Lookups that may wait for budget at once; beyond it, 503 with Retry-After at once.
    #[arg(long, env = "TASKGATE_MAX_QUEUE", default_value = "1000", value_parser = parse_count)]
    pub max_queue: usize,

    /// Longest wait for budget before a lookup is answered 503 with Retry-After.
    #[arg(long, env = "TASKGATE_MAX_QUEUE_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub max_queue_wait: Duration,

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

    /// Memory bound of the answer cache in bytes (rendered answer plus bookkeeping per entry).
    #[arg(long, env = "TASKGATE_CACHE_CAPACITY", default_value = "67108864", value_parser = parse_count)]
    pub cache_capacity: usize,

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

    /// Replicas sharing the budget; while Redis is down each uses RATE_LIMIT / this.
    #[arg(long, env = "TASKGATE_EXPECTED_REPLICAS", default_value = "3", value_parser = parse_rate_limit)]
    pub expected_replicas: u32,

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
    #[arg(long, env = "TASKGATE_METADATA_ENDPOINT", default_value = crate::cvm_role::DEFAULT_METADATA_ENDPOINT)]
    pub metadata_endpoint: String,

    /// Callers allowed to look up tasks, one `<caller-name> <token>` per line; re-read when it
    /// changes. Without it, /tasks is open to anyone who can reach taskgate.
    #[arg(long, env = "TASKGATE_CALLER_TOKENS_FILE")]
    pub caller_tokens_file: Option<PathBuf>,

    /// Open client connections at most (all workers together); more wait in the backlog.
    #[arg(long, env = "TASKGATE_MAX_CONNECTIONS", default_value = "25000", value_parser = parse_count)]
    pub max_connections: usize,

    /// Time a client has to send its request head after connecting (slow clients are cut).
    #[arg(long, env = "TASKGATE_CLIENT_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub client_timeout: Duration,

    /// Longest long poll (`?wait=` or `Prefer: wait`); longer asks are capped to it.
    #[arg(long, env = "TASKGATE_MAX_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// Long polls held at once; beyond it a request is answered at once with the current status.
    #[arg(long, env = "TASKGATE_MAX_WAITERS", default_value = "10000", value_parser = parse_count)]
    pub max_waiters: usize,

    /// Run against the embedded simulated SSM upstream with throwaway credentials.
    #[arg(long, env = "TASKGATE_DEMO")]
    pub demo: bool,

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

/// A start-up failure that names the setting at fault.
#[derive(Debug)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<CredentialsError> for ConfigError {
    fn from(e: CredentialsError) -> Self {
        let setting = match &e {
            CredentialsError::Missing(name) | CredentialsError::Malformed(name, _) => *name,
        };
        Self {
            setting: setting.to_string(),
            message: format!("{e} (set it, use TASKGATE_CREDENTIALS_FILE or ~/.tencentcloud/credentials, or run with --demo)"),
        }
    }
}

/// Where and how to reach the upstream, derived once from `TASKGATE_UPSTREAM_ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL requests are posted to, always with path `/`.
    pub url: String,
    /// The `Host` value sent and signed: lowercase, with the port when it is not the default.
    pub host: String,
    pub is_tls: bool,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: awc::http::Uri = text
            .trim()
            .parse()
            .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        let is_tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{text:?} must start with https:// or http://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err("must not carry user information".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{text:?} must be a bare origin (the API is always POST /)"
            ));
        }
        let host_name = authority.host().to_ascii_lowercase();
        let default_port = if is_tls { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{host_name}:{port}"),
            _ => host_name,
        };
        let scheme = if is_tls { "https" } else { "http" };
        Ok(Self {
            url: format!("{scheme}://{host}/"),
            host,
            is_tls,
        })
    }
}

impl Config {
    /// Parses flags and environment, turning clap's errors into ones that name the variable.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args).map_err(name_env_in_error)
    }

    /// The region to send, if any: TASKGATE_REGION, else TENCENTCLOUD_REGION.
    pub fn effective_region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or(self.tencentcloud_region.as_deref())
            .map(str::trim)
            .filter(|r| !r.is_empty())
    }

    /// Checks what clap cannot check field by field.
    pub fn validate(&self) -> Result<Endpoint, ConfigError> {
        let endpoint = Endpoint::parse(&self.upstream_endpoint).map_err(|message| ConfigError {
            setting: "TASKGATE_UPSTREAM_ENDPOINT".into(),
            message,
        })?;
        if let Some(region) = self.effective_region() {
            if !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(ConfigError {
                    setting: "TASKGATE_REGION".into(),
                    message: format!("{region:?} is not a region name like ap-guangzhou"),
                });
            }
        }
        if self.upstream_timeout > self.request_timeout {
            return Err(ConfigError {
                setting: "TASKGATE_UPSTREAM_TIMEOUT".into(),
                message: "must not be longer than TASKGATE_REQUEST_TIMEOUT".into(),
            });
        }
        if let Some(url) = &self.redis_url {
            if !(url.0.starts_with("redis://") || url.0.starts_with("rediss://")) {
                return Err(ConfigError {
                    setting: "TASKGATE_REDIS_URL".into(),
                    message: format!("{url:?} must start with redis:// or rediss://"),
                });
            }
            redis::Client::open(url.0.as_str()).map_err(|e| ConfigError {
                setting: "TASKGATE_REDIS_URL".into(),
                message: format!("{url:?} is not a usable Redis URL: {e}"),
            })?;
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err(ConfigError {
                setting: "TASKGATE_REDIS_PREFIX".into(),
                message: "must be non-empty and without spaces".into(),
            });
        }
        if let Some(role) = &self.cvm_role {
            let setting = |message: &str| ConfigError {
                setting: "TASKGATE_CVM_ROLE".into(),
                message: message.into(),
            };
            let allowed = |b: u8| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b);
            if role.is_empty() || role.len() > 128 || !role.bytes().all(allowed) {
                return Err(setting(
                    "must be a CAM role name, or auto for the role bound to this instance",
                ));
            }
            if self.demo
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
                return Err(ConfigError {
                    setting: "TASKGATE_METADATA_ENDPOINT".into(),
                    message: format!(
                        "{:?} must start with http:// or https://",
                        self.metadata_endpoint
                    ),
                });
            }
        }
        if let Some(path) = &self.upstream_ca_file {
            if !path.is_file() {
                return Err(ConfigError {
                    setting: "TASKGATE_UPSTREAM_CA_FILE".into(),
                    message: format!("{} is not a readable file", path.display()),
                });
            }
        }
        Ok(endpoint)
    }

    /// The CVM role to take temporary credentials from, when one is configured.
    pub fn cvm_role(&self) -> Option<crate::cvm_role::CvmRole> {
        self.cvm_role
            .as_deref()
            .map(|role| crate::cvm_role::CvmRole::new(&self.metadata_endpoint, role))
    }

    /// The credentials file in use, and the setting that chose it: TASKGATE_CREDENTIALS_FILE;
    /// else, when TENCENTCLOUD_SECRET_ID and _KEY are both unset, the SDKs' profile file
    /// (TENCENTCLOUD_CREDENTIALS_FILE, or ~/.tencentcloud/credentials when it exists).
    pub fn credentials_file_in_use(&self) -> Option<(PathBuf, &'static str)> {
        if let Some(path) = &self.credentials_file {
            return Some((path.clone(), "TASKGATE_CREDENTIALS_FILE"));
        }
        if self.demo
            || self.cvm_role.is_some()
            || self.secret_id.is_some()
            || self.secret_key.is_some()
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

    /// The credentials to sign with, and the file they came from with its contents (to watch it
    /// for changes); demo mode makes throwaway ones.
    pub fn credentials(&self) -> Result<(Credentials, Option<(PathBuf, String)>), ConfigError> {
        if self.demo {
            return Ok((Credentials::generate_demo(), None));
        }
        if let Some((path, setting_name)) = self.credentials_file_in_use() {
            let setting = |message: String| ConfigError {
                setting: setting_name.into(),
                message,
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| setting(format!("cannot read {}: {e}", path.display())))?;
            let credentials = crate::credentials_file::parse(&text)
                .map_err(|e| setting(format!("{}: {e}", path.display())))?;
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

/// clap names the flag (`--upstream-timeout <DURATION>`); operators set the variable. Say both.
fn name_env_in_error(error: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return error;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let long = arg
        .trim_start_matches("--")
        .split([' ', '='])
        .next()
        .unwrap_or_default()
        .to_string();
    let command = Config::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    match env {
        Some(env) => {
            let mut command = Config::command();
            let detail = error
                .get(ContextKind::InvalidValue)
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            let reason = error.to_string();
            let reason = reason
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            command.error(
                error.kind(),
                format!("setting {env} (--{long}):{detail}\n  {reason}"),
            )
        }
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_non_default_ports_in_the_host() {
        let e = Endpoint::parse("http://127.0.0.1:18080").unwrap();
        assert_eq!(e.host, "127.0.0.1:18080");
        assert_eq!(e.url, "http://127.0.0.1:18080/");
        assert!(!e.is_tls);
        let e = Endpoint::parse("https://SSM.TencentCloudAPI.com:443/").unwrap();
        assert_eq!(e.host, "ssm.tencentcloudapi.com");
        assert!(e.is_tls);
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("https://x/path").is_err());
        assert!(Endpoint::parse("https://user:pw@x/").is_err());
    }

    #[test]
    fn defaults_parse_and_validate() {
        let config = Config::from_args(["taskgate", "--demo"]).unwrap();
        assert_eq!(config.rate_limit, 20);
        assert_eq!(config.max_queue_wait, Duration::from_secs(2));
        assert_eq!(config.upstream_timeout, Duration::from_secs(5));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_args(["taskgate", "--upstream-timeout", "soon"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("TASKGATE_UPSTREAM_TIMEOUT"), "{text}");
        let err = Config::from_args(["taskgate", "--rate-limit", "0"]).unwrap_err();
        assert!(err.to_string().contains("TASKGATE_RATE_LIMIT"));
    }
}

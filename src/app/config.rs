//! Configuration, parsed once at start from flags and environment variables (clap).
//!
//! Every setting is an environment variable and a flag; `taskgate --help` lists them by group
//! with their defaults. Each group (`settings`) builds the settings of its own part. A bad value
//! stops the start with a message naming the variable, never later in a request. Secrets are read
//! here but never echoed: clap is told to hide their values in `--help`.

use std::time::Duration;

use clap::{CommandFactory, Parser};

use super::config_error::ConfigError;
use super::settings::{
    BudgetSettings, CallerSettings, CredentialSettings, LookupSettings, ServerSettings,
    SharedSettings, UpstreamSettings, RATE_WINDOW,
};
use super::trace_settings::TraceSettings;
use crate::budget::RENEW_EVERY;
use crate::shared::LeaseTerms;
use crate::upstream::Endpoint;

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
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub upstream: UpstreamSettings,
    #[command(flatten)]
    pub lookup: LookupSettings,
    #[command(flatten)]
    pub budget: BudgetSettings,
    #[command(flatten)]
    pub shared: SharedSettings,
    #[command(flatten)]
    pub credentials: CredentialSettings,
    #[command(flatten)]
    pub callers: CallerSettings,
    #[command(flatten)]
    pub traces: TraceSettings,
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

    /// Checks what clap cannot check field by field, and what settings of different groups
    /// require of each other. Returns the configured upstream endpoint.
    pub fn validate(&self) -> Result<Endpoint, ConfigError> {
        let endpoint = self.upstream.endpoint()?;
        if self.upstream.upstream_timeout > self.lookup.request_timeout {
            return Err(ConfigError::new(
                "TASKGATE_UPSTREAM_TIMEOUT",
                "must not be longer than TASKGATE_REQUEST_TIMEOUT",
            ));
        }
        self.shared.shared_config()?;
        self.credentials.validate(self.server.demo)?;
        self.traces.trace_config()?;
        Ok(endpoint)
    }

    /// The terms of this replica's lease of the shared budget. A lease lasts 3 s on Redis's clock
    /// and is renewed every 0.25 s; this replica counts it as ended one window plus the margin
    /// earlier on its own clock, and Redis counts it until the longest attempt, a window and the
    /// margin later (a call sent just before the end may still arrive then). The safe share
    /// covers 30 s more of Redis trouble.
    pub(crate) fn lease_terms(&self) -> LeaseTerms {
        let window_and_margin = self.budget.cooling();
        LeaseTerms {
            limit: self.budget.rate_limit,
            lease_for: Duration::from_secs(3),
            safe_for: Duration::from_secs(30),
            tail: self.upstream.upstream_timeout + window_and_margin,
            local_margin: window_and_margin,
            hold_off: RENEW_EVERY + self.shared.redis_timeout + Duration::from_millis(250),
            window: RATE_WINDOW,
        }
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
    use std::time::Duration;

    #[test]
    fn defaults_parse_and_validate() {
        let config = Config::from_args(["taskgate", "--demo"]).unwrap();
        assert_eq!(config.budget.rate_limit, 20);
        assert_eq!(config.budget.max_queue_wait, Duration::from_secs(2));
        assert_eq!(config.upstream.upstream_timeout, Duration::from_secs(5));
        assert_eq!(
            config.upstream.upstream_endpoint,
            "https://ssm.intl.tencentcloudapi.com"
        );
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

    #[test]
    fn settings_of_different_groups_are_checked_together() {
        let config =
            Config::from_args(["taskgate", "--demo", "--upstream-timeout", "40s"]).unwrap();
        assert_eq!(
            config.validate().unwrap_err().setting,
            "TASKGATE_UPSTREAM_TIMEOUT"
        );
        let config = Config::from_args(["taskgate", "--demo", "--cvm-role", "auto"]).unwrap();
        assert_eq!(config.validate().unwrap_err().setting, "TASKGATE_CVM_ROLE");
        let config = Config::from_args(["taskgate", "--demo", "--redis-url", "http://x"]).unwrap();
        assert_eq!(config.validate().unwrap_err().setting, "TASKGATE_REDIS_URL");
    }
}

//! The traces settings group: OpenTelemetry's standard `OTEL_*` variables (each also a flag),
//! read as the specification names them, for OTLP over HTTP/protobuf. Without an endpoint no
//! traces are made at all. Apart from the other groups (`settings`) only to keep files short.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::config_error::ConfigError;
use super::parse::parse_count;
use crate::telemetry::traces::{self, TraceConfig};
use crate::upstream::tls;

/// Milliseconds, as the `OTEL_*` timeouts and delays are written.
fn parse_millis(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        _ => Err("must be a whole number of milliseconds, such as 5000".into()),
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`, often a backend's API key: never printed.
#[derive(Clone)]
pub struct OtlpHeaders(String);

impl fmt::Debug for OtlpHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtlpHeaders(***)")
    }
}

/// OpenTelemetry traces (OTLP over HTTP/protobuf): off unless an endpoint is set.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Traces (OpenTelemetry)")]
pub struct TraceSettings {
    /// OTLP/HTTP base URL of the collector, such as http://otel-collector:4318: spans are posted
    /// to its /v1/traces. Without it (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) no traces are made.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Full URL spans are posted to, used as given; takes precedence over
    /// OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(
        long = "otlp-traces-endpoint",
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP transport: http/protobuf, the only one taskgate speaks.
    #[arg(
        long = "otlp-protocol",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: String,

    /// Headers sent with every export, as key=value,key2=value2 (values percent-encoded): a
    /// backend's API key, for example.
    #[arg(long = "otlp-headers", env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(OtlpHeaders(s.to_string())))]
    pub otlp_headers: Option<OtlpHeaders>,

    /// Time allowed for one export, connecting included, in milliseconds.
    #[arg(long = "otlp-timeout", env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value = "10000", value_parser = parse_millis)]
    pub otlp_timeout: Duration,

    /// Extra PEM bundle of CA certificates trusted for an https collector, added to the built-in
    /// roots.
    #[arg(long = "otlp-certificate", env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_certificate: Option<PathBuf>,

    /// Exporter of traces: otlp, or none for no traces whatever else is set.
    #[arg(
        long = "traces-exporter",
        env = "OTEL_TRACES_EXPORTER",
        default_value = "otlp"
    )]
    pub traces_exporter: String,

    /// service.name of every span (default: service.name of OTEL_RESOURCE_ATTRIBUTES, else
    /// taskgate).
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// Resource attributes of every span, as key=value,key2=value2 (values percent-encoded),
    /// such as deployment.environment.name=prod.
    #[arg(long = "otel-resource-attributes", env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub otel_resource_attributes: Option<String>,

    /// Sampler: parentbased_always_on (follow the caller's decision, sample new traces),
    /// parentbased_always_off, parentbased_traceidratio, always_on, always_off or traceidratio.
    #[arg(
        long = "traces-sampler",
        env = "OTEL_TRACES_SAMPLER",
        default_value = "parentbased_always_on"
    )]
    pub traces_sampler: String,

    /// The sampler's argument: for the traceidratio samplers, the share of new traces sampled,
    /// from 0 to 1 (default 1).
    #[arg(long = "traces-sampler-arg", env = "OTEL_TRACES_SAMPLER_ARG")]
    pub traces_sampler_arg: Option<String>,

    /// Ended spans waiting for export at most; beyond it spans are dropped (counted in
    /// taskgate_trace_spans_dropped_total), never waited for.
    #[arg(long = "bsp-max-queue-size", env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value = "2048", value_parser = parse_count)]
    pub bsp_max_queue: usize,

    /// Spans sent in one export at most (no more than OTEL_BSP_MAX_QUEUE_SIZE).
    #[arg(long = "bsp-max-export-batch-size", env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value = "512", value_parser = parse_count)]
    pub bsp_max_batch: usize,

    /// Longest a span waits for its batch to fill before it is sent, in milliseconds.
    #[arg(long = "bsp-schedule-delay", env = "OTEL_BSP_SCHEDULE_DELAY", default_value = "5000", value_parser = parse_millis)]
    pub bsp_schedule_delay: Duration,

    /// true: no traces at all, whatever else is set.
    #[arg(long = "otel-sdk-disabled", env = "OTEL_SDK_DISABLED", default_value = "false", action = clap::ArgAction::Set, value_parser = |s: &str| Ok::<_, String>(s.trim().eq_ignore_ascii_case("true")))]
    pub otel_sdk_disabled: bool,
}

/// A set, non-empty value.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl TraceSettings {
    /// The exporter's settings when traces are on (an endpoint is set), checked; `None` when off.
    pub(crate) fn trace_config(&self) -> Result<Option<TraceConfig>, ConfigError> {
        let error = |setting: &str, message: String| ConfigError::new(setting, message);
        match self.traces_exporter.trim() {
            "otlp" => {}
            "none" => return Ok(None),
            other => {
                return Err(error(
                    "OTEL_TRACES_EXPORTER",
                    format!("{other:?}: taskgate exports otlp (or none)"),
                ))
            }
        }
        let url = match (
            given(&self.otlp_traces_endpoint),
            given(&self.otlp_endpoint),
        ) {
            _ if self.otel_sdk_disabled => return Ok(None),
            (Some(url), _) => {
                collector_url(url).map_err(|m| error("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", m))?
            }
            (None, Some(base)) => collector_url(base)
                .and_then(|_| traces_url(base))
                .map_err(|m| error("OTEL_EXPORTER_OTLP_ENDPOINT", m))?,
            (None, None) => return Ok(None),
        };
        if self.otlp_protocol.trim() != "http/protobuf" {
            return Err(error(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                format!(
                    "{:?}: taskgate speaks http/protobuf only",
                    self.otlp_protocol
                ),
            ));
        }
        let headers = match &self.otlp_headers {
            Some(OtlpHeaders(text)) => {
                headers(text).map_err(|m| error("OTEL_EXPORTER_OTLP_HEADERS", m))?
            }
            None => Vec::new(),
        };
        let sampler = traces::sampler(&self.traces_sampler, self.traces_sampler_arg.as_deref())
            .map_err(|(setting, m)| error(setting, m))?;
        let attributes = traces::key_values(given(&self.otel_resource_attributes).unwrap_or(""))
            .map_err(|m| error("OTEL_RESOURCE_ATTRIBUTES", m))?;
        if self.bsp_max_batch > self.bsp_max_queue {
            return Err(error(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                "must not be more than OTEL_BSP_MAX_QUEUE_SIZE".into(),
            ));
        }
        if self.otlp_timeout.is_zero() {
            return Err(error(
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "must be above 0".into(),
            ));
        }
        let tls = tls::client_config(self.otlp_certificate.as_deref())
            .map_err(|m| error("OTEL_EXPORTER_OTLP_CERTIFICATE", m))?;
        Ok(Some(TraceConfig {
            url,
            headers,
            timeout: self.otlp_timeout,
            tls,
            sampler,
            resource: traces::resource(given(&self.otel_service_name), &attributes),
            max_queue: self.bsp_max_queue,
            max_batch: self.bsp_max_batch,
            schedule_delay: self.bsp_schedule_delay,
        }))
    }
}

/// An http(s) URL with a host and no user information (credentials go in the headers).
fn collector_url(text: &str) -> Result<String, String> {
    let uri: awc::http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{text:?} must start with http:// or https://"));
    }
    match uri.authority() {
        None => Err(format!("{text:?} has no host")),
        Some(a) if a.as_str().contains('@') => Err(
            "must not carry user information (send credentials with OTEL_EXPORTER_OTLP_HEADERS)"
                .into(),
        ),
        Some(_) => Ok(text.to_owned()),
    }
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is a base: traces go to its path + `/v1/traces`.
fn traces_url(base: &str) -> Result<String, String> {
    if base.contains('?') {
        return Err(format!("{base:?} is a base URL: no query"));
    }
    Ok(format!("{}/v1/traces", base.trim_end_matches('/')))
}

fn headers(text: &str) -> Result<Vec<(String, String)>, String> {
    use awc::http::header::{HeaderName, HeaderValue};
    let pairs = traces::key_values(text)?;
    for (name, value) in &pairs {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        // The value is a secret: the message names the header only.
        HeaderValue::from_str(value).map_err(|_| format!("the value of {name:?} is not valid"))?;
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use crate::app::Config;

    fn traces(args: &[&str]) -> Result<Option<String>, String> {
        let mut all = vec!["taskgate", "--demo"];
        all.extend_from_slice(args);
        let config = Config::from_args(all).map_err(|e| e.to_string())?;
        config
            .traces
            .trace_config()
            .map(|c| c.map(|c| c.url))
            .map_err(|e| e.setting)
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(traces(&[]), Ok(None));
        assert_eq!(traces(&["--otlp-endpoint", " "]), Ok(None));
        let on = ["--otlp-endpoint", "http://c:4318"];
        assert_eq!(
            traces(&[&on[..], &["--otel-sdk-disabled", "TRUE"]].concat()),
            Ok(None)
        );
        assert_eq!(
            traces(&[&on[..], &["--traces-exporter", "none"]].concat()),
            Ok(None)
        );
    }

    #[test]
    fn the_traces_url_follows_the_specification() {
        let url = |base: &str| traces(&["--otlp-endpoint", base]).unwrap().unwrap();
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(url("https://c/otlp"), "https://c/otlp/v1/traces");
        let given = traces(&[
            "--otlp-endpoint",
            "http://c:4318",
            "--otlp-traces-endpoint",
            "http://t:1/custom",
        ]);
        assert_eq!(given, Ok(Some("http://t:1/custom".into())));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let on = "http://c:4318";
        for (args, setting) in [
            (
                vec!["--otlp-endpoint", "c:4318"],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec!["--otlp-endpoint", "http://u:p@c"],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec!["--otlp-traces-endpoint", "ftp://c"],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                vec!["--otlp-endpoint", on, "--otlp-protocol", "grpc"],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec!["--otlp-endpoint", on, "--traces-sampler", "xray"],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec!["--otlp-endpoint", on, "--otlp-headers", "a"],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                vec!["--otlp-endpoint", on, "--otlp-headers", "a b=c"],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                vec!["--otlp-endpoint", on, "--otel-resource-attributes", "x"],
                "OTEL_RESOURCE_ATTRIBUTES",
            ),
            (
                vec!["--otlp-endpoint", on, "--bsp-max-queue-size", "8"],
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            ),
            (
                vec!["--otlp-endpoint", on, "--traces-exporter", "zipkin"],
                "OTEL_TRACES_EXPORTER",
            ),
        ] {
            assert_eq!(traces(&args), Err(setting.to_string()), "{args:?}");
        }
    }

    #[test]
    fn otlp_headers_are_never_printed() {
        let config = Config::from_args(["taskgate", "--otlp-headers", "api-key=s3cret"]).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}

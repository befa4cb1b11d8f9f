//! What the trace exporter is built from, and the parsers of the standard `OTEL_*` values that
//! need more than clap: sampler names, `key=value` lists, the resource.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::Sampler;
use opentelemetry_sdk::Resource;

/// Everything the exporter needs, checked at start.
#[derive(Clone)]
pub(crate) struct TraceConfig {
    /// Where batches are posted: the traces endpoint as given, or the endpoint + `/v1/traces`.
    pub url: String,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), often a backend's API key.
    pub headers: Vec<(String, String)>,
    /// One export's time limit, connecting included.
    pub timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    pub sampler: Sampler,
    pub resource: Resource,
    /// Ended spans waiting for export at most; beyond it they are dropped (and counted).
    pub max_queue: usize,
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill.
    pub schedule_delay: Duration,
}

/// The sampler an `OTEL_TRACES_SAMPLER` name and its `_ARG` mean (the specification's names);
/// an error names the variable at fault.
pub(crate) fn sampler(name: &str, arg: Option<&str>) -> Result<Sampler, (&'static str, String)> {
    let ratio = || -> Result<f64, (&'static str, String)> {
        let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
            return Ok(1.0);
        };
        match arg.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
            _ => Err((
                "OTEL_TRACES_SAMPLER_ARG",
                format!("{arg:?} is not a ratio from 0 to 1"),
            )),
        }
    };
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => {
            return Err((
                "OTEL_TRACES_SAMPLER",
                format!(
                    "{other:?} is not a sampler taskgate knows: always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off or \
                     parentbased_traceidratio"
                ),
            ))
        }
    })
}

/// A `key1=value1,key2=value2` list as `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`
/// take it: members trimmed, values percent-decoded (the W3C Baggage octets). Any member without
/// a key and `=`, or with a bad escape, makes the whole list invalid.
pub(crate) fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (key, value) = member
            .split_once('=')
            .ok_or_else(|| format!("{member:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{member:?} has no key"));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("the value of {key:?} has a bad %-escape"))?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The resource every span carries: `OTEL_RESOURCE_ATTRIBUTES`, `service.name` from
/// `OTEL_SERVICE_NAME` (else the attributes', else `taskgate`), `service.version`, and the SDK's
/// `telemetry.sdk.*`.
pub(crate) fn resource(service_name: Option<&str>, attributes: &[(String, String)]) -> Resource {
    let named = |key: &str| attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let service_name = service_name
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .or_else(|| named("service.name").cloned())
        .unwrap_or_else(|| "taskgate".to_owned());
    let version = named("service.version")
        .cloned()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(
            attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(KeyValue::new("service.version", version))
        .with_service_name(service_name)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Key;

    #[test]
    fn sampler_names_are_the_specifications() {
        for name in [
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ] {
            assert!(sampler(name, Some("0.25")).is_ok(), "{name}");
        }
        assert!(matches!(
            sampler("traceidratio", None),
            Ok(Sampler::TraceIdRatioBased(r)) if r == 1.0
        ));
        assert!(sampler("traceidratio", Some("1.5")).is_err());
        assert!(sampler("traceidratio", Some("half")).is_err());
        assert!(sampler("jaeger_remote", None).is_err());
    }

    #[test]
    fn key_value_lists_are_trimmed_and_percent_decoded() {
        let pairs = key_values(" deployment.environment.name=prod , team=a%2Cb%20c,").unwrap();
        assert_eq!(
            pairs,
            [
                ("deployment.environment.name".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "a,b c".to_owned())
            ]
        );
        assert!(key_values("novalue").is_err());
        assert!(key_values("=v").is_err());
        assert!(key_values("k=%zz").is_err());
        assert!(key_values("").unwrap().is_empty());
    }

    #[test]
    fn the_service_name_comes_from_the_setting_then_the_attributes() {
        let attrs = vec![("service.name".to_owned(), "from-attrs".to_owned())];
        let name = |r: &Resource| r.get(&Key::new("service.name")).unwrap().to_string();
        assert_eq!(name(&resource(Some("gate"), &attrs)), "gate");
        assert_eq!(name(&resource(None, &attrs)), "from-attrs");
        assert_eq!(name(&resource(Some(" "), &[])), "taskgate");
        let r = resource(None, &[]);
        assert!(r.get(&Key::new("telemetry.sdk.language")).is_some());
        assert!(r.get(&Key::new("service.version")).is_some());
    }
}

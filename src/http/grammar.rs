//! The request grammar callers may use beside the flow id: `X-Request-Timeout` to shorten the
//! deadline, and `?wait=` or `Prefer: wait` to hold a long poll. Deliberately narrow: it is an API.

use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;

use crate::error::ApiError;

/// Header names as constants: a `&str` name is parsed again on every lookup.
const X_REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");
const PREFER: HeaderName = HeaderName::from_static("prefer");

/// The deadline a caller asks for with `X-Request-Timeout` (`2s`, `500ms` or plain seconds),
/// which may only shorten the configured one.
pub(super) fn caller_timeout(
    req: &HttpRequest,
    configured: Duration,
) -> Result<Duration, ApiError> {
    let Some(value) = req.headers().get(X_REQUEST_TIMEOUT) else {
        return Ok(configured);
    };
    let asked = value
        .to_str()
        .ok()
        .and_then(parse_timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ApiError::InvalidRequest(
                "X-Request-Timeout must be a positive whole number of ms, s or m, such as 2s, \
                 500ms or 3 (seconds)"
                    .into(),
            )
        })?;
    Ok(asked.min(configured))
}

/// `<digits>[ms|s|m]`, seconds when the unit is left out. Deliberately narrow: it is an API.
fn parse_timeout(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let significant = text[..digits].trim_start_matches('0').len();
    if digits == 0 || significant > 9 {
        return None;
    }
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(number)),
        "ms" => Some(Duration::from_millis(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        _ => None,
    }
}

/// A long poll the caller asked for, capped to `TASKGATE_MAX_WAIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wait {
    pub duration: Duration,
    /// Asked with `Prefer: wait=N` (answered with `Preference-Applied`).
    pub from_prefer: bool,
}

/// `?wait=30s` (the X-Request-Timeout grammar) or `Prefer: wait=30` (RFC 7240, seconds).
pub(super) fn requested_wait(
    req: &HttpRequest,
    max_wait: Duration,
) -> Result<Option<Wait>, ApiError> {
    let from_query = req
        .query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait="));
    if let Some(text) = from_query {
        let duration = parse_timeout(text).ok_or_else(|| {
            ApiError::InvalidRequest(
                "wait must be a whole number of ms, s or m, such as 30s (seconds when the unit \
                 is left out)"
                    .into(),
            )
        })?;
        return Ok(Some(Wait {
            duration: duration.min(max_wait),
            from_prefer: false,
        }));
    }
    let preferences = req
        .headers()
        .get_all(PREFER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(str::trim);
    for preference in preferences {
        let Some((name, value)) = preference.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("wait") {
            continue;
        }
        // RFC 7240: a preference the server cannot understand is ignored, not an error.
        if let Ok(seconds) = value.trim().trim_matches('"').parse::<u32>() {
            return Ok(Some(Wait {
                duration: Duration::from_secs(u64::from(seconds)).min(max_wait),
                from_prefer: true,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_the_documented_grammar_only() {
        assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("000000002s"), Some(Duration::from_secs(2)));
        for bad in ["", "s", "1.5s", "-1s", "1h", "1 s", "1234567890s", "2sec"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }
}

//! W3C Trace Context in: the caller's `traceparent` and `tracestate`, read strictly as the
//! specification says (<https://www.w3.org/TR/trace-context/>).
//!
//! A `traceparent` that does not parse is ignored as a whole, and so is its `tracestate`: the
//! request starts a new trace. What makes one malformed: not exactly one header; fields that are
//! not lowercase hex of the right length; version `ff`; version `00` with anything after the
//! flags (a higher version may carry more fields after a `-`); an all-zero trace id or parent id.
//! Of the flags only `sampled` is kept. `tracestate` headers are joined with commas; a list that
//! does not parse (or has more than 32 members) is dropped, the `traceparent` still holds.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The header names, lowercase as actix and HTTP/2 keep them.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// `tracestate` carries at most this many list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The caller's span, when its headers carry a valid one: `traceparent` values and `tracestate`
/// values as received, in order.
pub(crate) fn extract<'a>(
    mut traceparent: impl Iterator<Item = &'a [u8]>,
    tracestate: impl Iterator<Item = &'a [u8]>,
) -> Option<SpanContext> {
    let value = traceparent.next()?;
    if traceparent.next().is_some() {
        return None;
    }
    let (trace_id, span_id, flags) = parse_traceparent(value)?;
    let state = parse_tracestate(tracestate).unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    // Optional whitespace around a header value is not part of it.
    let value = value.trim_ascii();
    // version "-" trace-id "-" parent-id "-" trace-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2.
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_u128(&value[0..2])? as u8;
    let future_fields_ok = value.len() == 55 || (version > 0 && value[55] == b'-');
    if version == 0xff || !future_fields_ok {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let span_id = hex_u128(&value[36..52])? as u64;
    let flags = hex_u128(&value[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// Lowercase hex digits only (no sign, no uppercase), at most 32 of them.
fn hex_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(nibble))
    })
}

fn parse_tracestate<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<TraceState> {
    let mut joined = String::new();
    for value in values {
        let value = std::str::from_utf8(value).ok()?;
        for member in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(member);
        }
    }
    if joined.is_empty() {
        return None;
    }
    if joined.split(',').count() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    TraceState::from_str(&joined).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(traceparent: &[&str], tracestate: &[&str]) -> Option<SpanContext> {
        extract(
            traceparent.iter().map(|v| v.as_bytes()),
            tracestate.iter().map(|v| v.as_bytes()),
        )
    }

    #[test]
    fn a_valid_traceparent_is_the_remote_parent() {
        let parent = parse(&[VALID], &["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]).unwrap();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().get("rojo"), Some("00f067aa0ba902b7"));
        let unsampled = parse(&[&VALID.replace("-01", "-00")], &[]).unwrap();
        assert!(!unsampled.is_sampled());
        // Unknown flags are dropped; a future version may add fields after a dash.
        let future = parse(&[&format!("cc{}-what-ever", &VALID[2..])], &[]).unwrap();
        assert!(future.is_sampled());
        assert!(parse(&[&format!(" {VALID}\t")], &[]).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert!(parse(&[bad], &["a=b"]).is_none(), "{bad:?}");
        }
        assert!(parse(&[VALID, VALID], &[]).is_none(), "two traceparents");
        assert!(parse(&[], &["a=b"]).is_none());
    }

    #[test]
    fn tracestate_headers_are_joined_and_bad_lists_dropped() {
        let joined = parse(&[VALID], &["a=1", "b=2,c=3"]).unwrap();
        assert_eq!(joined.trace_state().header(), "a=1,b=2,c=3");
        let bad = parse(&[VALID], &["not a member"]).unwrap();
        assert_eq!(bad.trace_state().header(), "");
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let too_many = parse(&[VALID], &[&many.join(",")]).unwrap();
        assert_eq!(too_many.trace_state().header(), "");
    }
}

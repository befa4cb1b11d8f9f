//! The access log: one line per request (target `taskgate::access`), in the shape of every other
//! log line, formatted here directly because it is on every request's path.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::Duration;

use opentelemetry::trace::TraceId;

use super::logging::{write_timestamp, LogFormat, SINK};

/// Milliseconds with three decimals, from whole microseconds (no float formatting).
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:03}", micros / 1_000, micros % 1_000)
    }
}

/// One access-log line's fields.
pub(crate) struct AccessRecord<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub served: &'a str,
    pub upstream_request_id: Option<&'a str>,
    pub caller: Option<&'a str>,
    pub request_id: &'a str,
    /// The request's trace (the caller's, or the one it started), when traces are on.
    pub trace_id: Option<TraceId>,
}

/// A trace id as the W3C header writes it (32 lowercase hex digits), or `-`.
struct TraceIdText(Option<TraceId>);

impl std::fmt::Display for TraceIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id:032x}"),
            None => f.write_str("-"),
        }
    }
}

/// Whether access lines are written: `TASKGATE_ACCESS_LOG` and `RUST_LOG` both allow it.
pub(crate) fn access_log_enabled(configured: bool) -> bool {
    configured && log::log_enabled!(target: "taskgate::access", log::Level::Info)
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Writes one access-log line, in the format of every other line.
pub(crate) fn access(record: &AccessRecord<'_>) {
    let Some(sink) = SINK.get() else { return };
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        format_access(&mut line, sink.format, record);
        sink.append(line.as_bytes());
    });
}

fn format_access(line: &mut String, format: LogFormat, r: &AccessRecord<'_>) {
    let duration_ms = Millis(r.duration);
    let upstream = r.upstream_request_id.unwrap_or("-");
    let caller = r.caller.unwrap_or("-");
    match format {
        LogFormat::Text => {
            write_timestamp(line);
            let _ = writeln!(
                line,
                " INFO  taskgate::access {m} {route} {status} method={m} route={route} \
                 status={status} duration_ms={duration_ms} served={served} \
                 upstream_request_id={} caller={} request_id={} trace_id={}",
                TextValue(upstream),
                TextValue(caller),
                TextValue(r.request_id),
                TraceIdText(r.trace_id),
                m = r.method,
                route = r.route,
                status = r.status,
                served = r.served,
            );
        }
        LogFormat::Json => {
            line.push_str("{\"ts\":\"");
            write_timestamp(line);
            let _ = write!(
                line,
                "\",\"level\":\"INFO\",\"target\":\"taskgate::access\",\"msg\":\"{m} {route} {status}\",\
                 \"method\":\"{m}\",\"route\":\"{route}\",\"status\":{status},\"duration_ms\":{duration_ms},\
                 \"served\":\"{served}\",\"upstream_request_id\":",
                m = r.method,
                route = r.route,
                status = r.status,
                served = r.served,
            );
            push_json_string(line, upstream);
            line.push_str(",\"caller\":");
            push_json_string(line, caller);
            line.push_str(",\"request_id\":");
            push_json_string(line, r.request_id);
            let _ = writeln!(line, ",\"trace_id\":\"{}\"}}", TraceIdText(r.trace_id));
        }
    }
}

/// A value from outside (an upstream request id): printed as-is when plain, quoted otherwise, so
/// it cannot forge a field or a line.
struct TextValue<'a>(&'a str);

impl std::fmt::Display for TextValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self
            .0
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=')
        {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

fn push_json_string(out: &mut String, value: &str) {
    // serde_json escapes quotes, backslashes and control characters exactly as JSON requires.
    out.push_str(&serde_json::Value::from(value).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(upstream: Option<&'a str>) -> AccessRecord<'a> {
        AccessRecord {
            method: "GET",
            route: "/tasks/{flow_id}",
            status: 200,
            duration: Duration::from_micros(1_234),
            served: "hit",
            upstream_request_id: upstream,
            caller: Some("billing"),
            request_id: "abc",
            trace_id: Some(TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)),
        }
    }

    #[test]
    fn json_access_lines_are_one_object_with_every_field() {
        let mut line = String::new();
        format_access(&mut line, LogFormat::Json, &record(Some("r\"1\n")));
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.234);
        assert_eq!(value["upstream_request_id"], "r\"1\n");
        assert_eq!(value["caller"], "billing");
        assert_eq!(value["target"], "taskgate::access");
        assert_eq!(value["msg"], "GET /tasks/{flow_id} 200");
        assert_eq!(value["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn text_access_lines_cannot_be_forged_by_upstream_values() {
        let mut line = String::new();
        format_access(
            &mut line,
            LogFormat::Text,
            &record(Some("x status=500\nfake")),
        );
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(
            line.contains(r#"upstream_request_id="x status=500\nfake""#),
            "{line}"
        );
        assert!(line.contains(" status=200 "));
        assert!(
            line.ends_with(" trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n"),
            "{line}"
        );
        let mut untraced = String::new();
        let record = AccessRecord {
            trace_id: None,
            ..record(None)
        };
        format_access(&mut untraced, LogFormat::Text, &record);
        assert!(untraced.ends_with(" trace_id=-\n"), "{untraced}");
    }
}

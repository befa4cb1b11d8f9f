//! Logging: `text` or `json` lines on standard error, written off the request path.
//!
//! Every line goes into one in-memory buffer; a writer thread empties it to standard error every
//! 50 ms, or sooner when it fills. A worker therefore never waits on a terminal or a pipe and
//! never wakes another thread per line, which is what keeps the access log cheap at tens of
//! thousands of requests per second. `flush` writes what is left before exit.
//!
//! Ordinary records go through `log` and env_logger (`RUST_LOG` filters, default `info`); JSON
//! mode writes one object per line with `ts`, `level`, `target`, `msg` and the record's fields.
//! The access log (target `taskgate::access`, one line per request) is formatted here directly,
//! in the same shape, because it is on every request's path.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::kv::{Key, Value, VisitSource};

use crate::civil::write_rfc3339_millis;

/// `TASKGATE_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How often buffered lines are written out at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Wake the writer early past this much.
const HIGH_WATER: usize = 256 * 1024;
/// Past this much unwritten (standard error blocked for long), new lines are dropped and counted
/// rather than let memory grow or stall the workers.
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

struct Sink {
    buffer: Mutex<Vec<u8>>,
    filled: Condvar,
    /// Held while writing, so lines leave in the order they were buffered.
    write: Mutex<()>,
    dropped: AtomicU64,
    format: LogFormat,
}

static SINK: OnceLock<Sink> = OnceLock::new();

impl Sink {
    fn append(&self, line: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() + line.len() > MAX_BUFFERED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.extend_from_slice(line);
        if buffer.len() >= HIGH_WATER {
            self.filled.notify_one();
        }
    }

    /// Takes what is buffered and writes it; the write lock keeps chunks in order.
    fn write_out(&self, wait: bool) {
        let _writing = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if wait && buffer.is_empty() {
                buffer = self
                    .filled
                    .wait_timeout(buffer, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::take(&mut *buffer)
        };
        if !chunk.is_empty() {
            let mut stderr = io::stderr().lock();
            let _ = stderr.write_all(&chunk);
            let _ = stderr.flush();
        }
    }
}

/// The `Write` end env_logger writes each formatted record into.
struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(sink) = SINK.get() {
            sink.append(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the global logger and starts the writer thread.
pub fn init(format: LogFormat) {
    let _ = SINK.set(Sink {
        buffer: Mutex::new(Vec::with_capacity(HIGH_WATER)),
        filled: Condvar::new(),
        write: Mutex::new(()),
        dropped: AtomicU64::new(0),
        format,
    });
    std::thread::Builder::new()
        .name("taskgate-log".into())
        .spawn(|| loop {
            if let Some(sink) = SINK.get() {
                sink.write_out(true);
            }
        })
        .expect("spawning the log writer thread");
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.target(env_logger::Target::Pipe(Box::new(SinkWriter)));
    match format {
        LogFormat::Text => builder.format(|buf, record| {
            let mut line = String::with_capacity(160);
            write_timestamp(&mut line);
            let _ = write!(
                line,
                " {:<5} {} {}",
                record.level(),
                record.target(),
                record.args()
            );
            let mut fields = TextFields(line);
            let _ = record.key_values().visit(&mut fields);
            writeln!(buf, "{}", fields.0)
        }),
        LogFormat::Json => builder.format(|buf, record| {
            let mut ts = String::with_capacity(24);
            write_timestamp(&mut ts);
            let mut object = serde_json::Map::new();
            object.insert("ts".into(), ts.into());
            object.insert("level".into(), record.level().as_str().into());
            object.insert("target".into(), record.target().into());
            object.insert("msg".into(), record.args().to_string().into());
            let mut fields = JsonFields(object);
            let _ = record.key_values().visit(&mut fields);
            writeln!(buf, "{}", serde_json::Value::Object(fields.0))
        }),
    };
    builder.init();
}

/// Writes every line buffered so far. Called before exit.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.write_out(false);
    }
}

/// Lines dropped because standard error could not keep up.
pub fn dropped_lines() -> u64 {
    SINK.get()
        .map_or(0, |sink| sink.dropped.load(Ordering::Relaxed))
}

thread_local! {
    /// The last millisecond formatted on this thread: at tens of thousands of lines a second,
    /// most lines share it with the one before.
    static STAMP: RefCell<(i64, String)> = RefCell::new((-1, String::with_capacity(24)));
}

fn write_timestamp(out: &mut String) {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    STAMP.with(|stamp| {
        let mut stamp = stamp.borrow_mut();
        if stamp.0 != millis {
            stamp.1.clear();
            write_rfc3339_millis(&mut stamp.1, millis);
            stamp.0 = millis;
        }
        out.push_str(&stamp.1);
    });
}

/// Milliseconds with three decimals, from whole microseconds (no float formatting).
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:03}", micros / 1_000, micros % 1_000)
    }
}

/// One access-log line's fields.
pub struct AccessRecord<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub served: &'a str,
    pub upstream_request_id: Option<&'a str>,
    pub caller: Option<&'a str>,
    pub request_id: &'a str,
}

/// Whether access lines are written: `TASKGATE_ACCESS_LOG` and `RUST_LOG` both allow it.
pub fn access_log_enabled(configured: bool) -> bool {
    configured && log::log_enabled!(target: "taskgate::access", log::Level::Info)
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Writes one access-log line, in the format of every other line.
pub fn access(record: &AccessRecord<'_>) {
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
                 upstream_request_id={} caller={} request_id={}",
                TextValue(upstream),
                TextValue(caller),
                TextValue(r.request_id),
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
            line.push_str("}\n");
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

struct TextFields(String);

impl<'kvs> VisitSource<'kvs> for TextFields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(f) = value.to_f64() {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
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
    }
}

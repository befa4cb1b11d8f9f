//! Logging: `text` or `json` lines on standard error, written off the request path.
//!
//! Every line goes into one in-memory buffer; a writer thread empties it to standard error every
//! 50 ms, or sooner when it fills. A worker therefore never waits on a terminal or a pipe and
//! never wakes another thread per line, which is what keeps the access log cheap at tens of
//! thousands of requests per second. `flush` writes what is left before exit.
//!
//! Ordinary records go through `log` and env_logger (`RUST_LOG` filters, default `info`); JSON
//! mode writes one object per line with `ts`, `level`, `target`, `msg` and the record's fields.
//! The access log (`access`) appends to the same buffer, in the same shape.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::support::lock;
use log::kv::{Key, Value, VisitSource};

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

pub(super) struct Sink {
    buffer: Mutex<Vec<u8>>,
    filled: Condvar,
    /// Held while writing, so lines leave in the order they were buffered.
    write: Mutex<()>,
    dropped: AtomicU64,
    pub(super) format: LogFormat,
}

pub(super) static SINK: OnceLock<Sink> = OnceLock::new();

impl Sink {
    pub(super) fn append(&self, line: &[u8]) {
        let mut buffer = lock(&self.buffer);
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
        let _writing = lock(&self.write);
        let chunk = {
            let mut buffer = lock(&self.buffer);
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

/// `2026-12-02T17:06:54.123Z`: RFC 3339 in UTC, to the millisecond.
const TIMESTAMP: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

thread_local! {
    /// The last millisecond formatted on this thread: at tens of thousands of lines a second,
    /// most lines share it with the one before.
    static STAMP: RefCell<(i128, String)> = RefCell::new((-1, String::with_capacity(24)));
}

/// Appends the current time, formatted at most once per millisecond per thread.
pub(super) fn write_timestamp(out: &mut String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let millis = nanos / 1_000_000;
    STAMP.with(|stamp| {
        let mut stamp = stamp.borrow_mut();
        if stamp.0 != millis {
            stamp.1.clear();
            stamp.1.push_str(&rfc3339_millis(millis));
            stamp.0 = millis;
        }
        out.push_str(&stamp.1);
    });
}

/// `millis` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (`-` past the year 9999).
fn rfc3339_millis(millis: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000)
        .ok()
        .and_then(|t| t.format(TIMESTAMP).ok())
        .unwrap_or_else(|| "-".into())
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

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_millisecond() {
        assert_eq!(
            rfc3339_millis(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_007), "2000-02-29T00:00:00.007Z");
    }
}

//! Logging: `text` or `json` lines on standard error, written off the request path.
//!
//! Records carry structured fields (`log`'s key-values); the access log is one record per request
//! with target `taskgate::access`. JSON mode writes one object per line with `ts`, `level`,
//! `target`, `msg` and every field, for log shippers. Lines go through a channel to one writer
//! thread, so a worker never waits on the terminal or a pipe; `flush` drains it before exit.

use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::OnceLock;
use std::time::Duration;

use log::kv::{Key, Value, VisitSource};

/// `TASKGATE_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

static WRITER: OnceLock<SyncSender<Message>> = OnceLock::new();

/// The `Write` end env_logger writes each formatted record into.
struct ChannelWriter(SyncSender<Message>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Blocks only when the writer thread is 64k lines behind: back-pressure rather than an
        // unbounded queue.
        self.0
            .send(Message::Line(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "log writer stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn run_writer(receiver: Receiver<Message>) {
    let mut out = BufWriter::with_capacity(64 * 1024, io::stderr());
    while let Ok(message) = receiver.recv() {
        let mut next = Some(message);
        // Take everything already queued, then flush once.
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = receiver.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// Installs the global logger. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let (sender, receiver) = sync_channel(65_536);
    std::thread::Builder::new()
        .name("taskgate-log".into())
        .spawn(move || run_writer(receiver))
        .expect("spawning the log writer thread");
    let _ = WRITER.set(sender.clone());
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.target(env_logger::Target::Pipe(Box::new(ChannelWriter(sender))));
    match format {
        LogFormat::Text => builder.format(|buf, record| {
            let mut fields = TextFields(String::new());
            let _ = record.key_values().visit(&mut fields);
            writeln!(
                buf,
                "{} {:<5} {} {}{}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args(),
                fields.0
            )
        }),
        LogFormat::Json => builder.format(|buf, record| {
            let mut object = serde_json::Map::new();
            object.insert("ts".into(), buf.timestamp_millis().to_string().into());
            object.insert("level".into(), record.level().as_str().into());
            object.insert("target".into(), record.target().into());
            object.insert("msg".into(), record.args().to_string().into());
            let mut fields = JsonFields(object);
            let _ = record.key_values().visit(&mut fields);
            let line = serde_json::Value::Object(fields.0).to_string();
            writeln!(buf, "{line}")
        }),
    };
    builder.init();
}

/// Waits (briefly) until every line logged so far is written. Called before exit.
pub fn flush() {
    let Some(sender) = WRITER.get() else { return };
    let (done, wait) = sync_channel(1);
    if sender.send(Message::Flush(done)).is_ok() {
        let _ = wait.recv_timeout(Duration::from_secs(2));
    }
}

struct TextFields(String);

impl<'kvs> VisitSource<'kvs> for TextFields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        use std::fmt::Write as _;
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

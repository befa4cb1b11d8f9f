//! `spawn_app()`: taskgate on `127.0.0.1:0` against a fake upstream, and a client to call it.
//! `spawn_process()`: the real binary as a child process, its log captured, for the tests that
//! judge what an operator sees (logs, exit codes, signals).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskgate::Application;
use taskgate::Config;

use crate::fake_upstream::{FakeUpstream, FAKE_SECRET_ID, FAKE_SECRET_KEY};

pub struct TestApp {
    pub base: String,
    pub fake: FakeUpstream,
    pub client: awc::Client,
    pub state: actix_web::web::Data<taskgate::AppState>,
}

/// A parsed answer.
pub struct Answer {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The arguments every test app gets: loopback, fake credentials, the fake's URL.
pub fn base_args(fake: &FakeUpstream) -> Vec<String> {
    [
        "taskgate",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--upstream-endpoint",
        &fake.url,
        "--secret-id",
        FAKE_SECRET_ID,
        "--secret-key",
        FAKE_SECRET_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(FakeUpstream::start(), &[]).await
}

pub async fn spawn_app_with(fake: FakeUpstream, extra: &[&str]) -> TestApp {
    let mut args = base_args(&fake);
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::from_args(args).expect("test configuration parses");
    let app = Application::build(config).await.expect("the app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    actix_rt::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        base,
        fake,
        client: client(),
        state,
    }
}

/// How long the test client keeps an idle connection to taskgate for reuse: less than the
/// server's keep-alive (actix-web's 5 s). A caller that waits out a `Retry-After` of 5 s and then
/// reuses its connection could otherwise send its request just as the server closes it, and awc
/// does not send an idempotent request again on a connection that was closed under it.
const IDLE_CONNECTION_REUSE: Duration = Duration::from_secs(3);

/// A client that can hold many connections at once (for herd tests).
pub fn client() -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .limit(1000)
                .conn_keep_alive(IDLE_CONNECTION_REUSE),
        )
        .timeout(Duration::from_secs(60))
        .finish()
}

impl TestApp {
    pub async fn get(&self, path: &str) -> Answer {
        self.request(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn request(&self, request: awc::ClientRequest) -> Answer {
        let mut response = request.send().await.expect("taskgate answers");
        let body = response
            .body()
            .limit(1 << 20)
            .await
            .expect("the body arrives")
            .to_vec();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body,
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        String::from_utf8(self.get("/metrics").await.body).expect("metrics are UTF-8")
    }

    /// Waits until `series` shows at least `at_least` (see [`until_metric`]).
    pub async fn until_metric(&self, series: &str, at_least: f64) -> String {
        until_metric(&self.client, &self.base, series, at_least).await
    }

    pub async fn task(&self, flow_id: i64) -> Answer {
        self.get(&format!("/tasks/{flow_id}")).await
    }
}

/// The value of one series, written as exported (`name` or `name{label="v"}`), in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Reads `{base}/metrics` until `series` shows at least `at_least`, and returns that text.
///
/// How a test awaits a state inside the gateway (requests held, a queue filled) instead of
/// sleeping for a time that a loaded machine may not honour. Panics after 30 s with the last text.
pub async fn until_metric(client: &awc::Client, base: &str, series: &str, at_least: f64) -> String {
    until_metrics(client, base, Duration::from_secs(30), series, |text| {
        metric_value(text, series).is_some_and(|v| v >= at_least)
    })
    .await
}

/// Reads `{base}/metrics` until `reached` holds for the text, and returns that text. Panics after
/// `within`, saying what was awaited (`what`) and the last text.
pub async fn until_metrics(
    client: &awc::Client,
    base: &str,
    within: Duration,
    what: &str,
    reached: impl Fn(&str) -> bool,
) -> String {
    let give_up = tokio::time::Instant::now() + within;
    loop {
        let mut response = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics answer");
        let body = response.body().limit(1 << 22).await.expect("metrics body");
        let text = String::from_utf8(body.to_vec()).expect("metrics are UTF-8");
        if reached(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{base}: {what} not reached within {within:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The binary as a child process, with its standard error collected line by line.
pub struct Process {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

pub fn spawn_process(args: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskgate"));
    command
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .args(args)
        .env_remove("RUST_LOG")
        // Credentials come from what each test passes, never from this machine's own set-up.
        .env_remove("TENCENTCLOUD_SECRET_ID")
        .env_remove("TENCENTCLOUD_SECRET_KEY")
        .env_remove("TENCENTCLOUD_SECURITY_TOKEN")
        .env_remove("TENCENTCLOUD_CREDENTIALS_FILE")
        .env_remove("HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_log = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(port) = line
                .split("listening on port ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok())
            {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
            thread_log.lock().unwrap().push(line);
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("taskgate did not start: {:?}", log.lock().unwrap()));
    Process { child, port, log }
}

impl Process {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM, as Kubernetes and systemd do.
pub fn sigterm(process: &Process) {
    let pid = process.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// Waits for the process to exit and returns its exit code.
pub async fn exit_code(mut process: Process) -> Option<i32> {
    actix_rt::task::spawn_blocking(move || process.child.wait().unwrap().code())
        .await
        .unwrap()
}

/// One replica of a shared-mode deployment (fake upstream, Redis at `redis_url`, key `prefix`).
pub fn spawn_replica(
    fake: &FakeUpstream,
    redis_url: &str,
    prefix: &str,
    extra: &[&str],
) -> Process {
    let mut args = vec![
        "--upstream-endpoint",
        &fake.url,
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    spawn_process(
        &args,
        &[
            ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
            ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY),
        ],
    )
}

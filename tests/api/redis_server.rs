//! A real `redis-server` on a free loopback port for the shared-mode tests.
//!
//! Without the binary the tests are skipped with a visible message, so `cargo test` passes on a
//! bare machine; with `TASKGATE_REQUIRE_REDIS=1` (set by `.ci/run`) a missing binary fails them.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free port below Linux's ephemeral range (32768-60999 by default).
///
/// Why not `bind(":0")` and drop: the kernel hands a just-freed ephemeral port to the next
/// `bind(":0")`, so a fake upstream of a test running in parallel could take it before
/// redis-server does (or while a test has redis killed), and the test would talk to the wrong
/// server. Ports below the range are never given out by the kernel, and the counter keeps the
/// tests of this process apart; the pid spreads concurrent test processes.
fn port_outside_the_ephemeral_range() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 100) as u16 * 100;
    for _ in 0..100 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + 100);
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

fn binary() -> Option<String> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| "redis-server".to_string())
}

impl RedisServer {
    /// Starts one, or returns None (skip) when redis-server is not installed and not required.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        if binary().is_none() {
            assert!(
                std::env::var("TASKGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
                "redis-server is required (TASKGATE_REQUIRE_REDIS=1) but not installed"
            );
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server)"
            );
            return None;
        }
        let port = port_outside_the_ephemeral_range();
        let mut server = Self { port, child: None };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..500 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills it the hard way, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

//! Files that are re-read when they change (credentials, caller tokens).
//!
//! Polling once a second, by content: it follows symlinks, so Kubernetes' atomic swap of a mounted
//! Secret (a new directory behind `..data`) is seen like an edit in place, and an unchanged file
//! costs one small read. A change takes effect within about a second.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use prometheus::IntCounter;

/// How often watched files are read.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The two counters a watched file bumps: one per applied change, one per unusable one.
#[derive(Clone)]
pub struct ReloadCounters {
    pub ok: IntCounter,
    pub error: IntCounter,
}

/// Re-reads the file at `path` when it changes, parses it, and applies what parses; a file that
/// does not parse leaves what is in force; both are counted in `counters` and logged, by `file`
/// (what the file holds) and path, never by content.
pub(crate) fn watch_parsed<T: 'static>(
    path: PathBuf,
    initial: &str,
    file: &'static str,
    counters: ReloadCounters,
    parse: fn(&str) -> Result<T, String>,
    apply: impl Fn(T) + 'static,
) {
    let shown = path.display().to_string();
    watch(path, initial, move |contents| match parse(&contents) {
        Ok(value) => {
            apply(value);
            log::info!("{file}: reloaded {shown}");
            counters.ok.inc();
        }
        Err(error) => {
            log::error!(
                "{file}: {shown} changed but cannot be used ({error}); keeping what is in force"
            );
            counters.error.inc();
        }
    });
}

/// Calls `on_change` with the new contents whenever the file at `path` changes (not for the
/// contents it has now, which the caller has already loaded).
fn watch(path: PathBuf, initial: &str, on_change: impl Fn(String) + 'static) {
    let mut seen: [u8; 32] = Sha256::digest(initial.as_bytes()).into();
    actix_rt::spawn(async move {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let Ok(contents) = tokio::fs::read_to_string(&path).await else {
                // Mid-swap or briefly missing: keep what we have and look again.
                continue;
            };
            let digest: [u8; 32] = Sha256::digest(contents.as_bytes()).into();
            if digest != seen {
                seen = digest;
                on_change(contents);
            }
        }
    });
}

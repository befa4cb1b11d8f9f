//! Files that are re-read when they change (credentials, caller tokens).
//!
//! Polling once a second, by content: it follows symlinks, so Kubernetes' atomic swap of a mounted
//! Secret (a new directory behind `..data`) is seen like an edit in place, and an unchanged file
//! costs one small read. A change takes effect within about a second.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How often watched files are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Calls `on_change` with the new contents whenever the file at `path` changes (not for the
/// contents it has now, which the caller has already loaded). Stops when `on_change` says so.
pub fn watch(path: PathBuf, initial: &str, mut on_change: impl FnMut(String) -> bool + 'static) {
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
                if !on_change(contents) {
                    return;
                }
            }
        }
    });
}

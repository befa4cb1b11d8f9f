//! The two clocks taskgate reads, behind one seam so logic never reads a hidden clock.
//!
//! Monotonic time (`Instant`, from tokio so tests can pause it) drives deadlines, TTLs and the rate
//! window; wall time (Unix seconds) is only what the upstream wants in `X-TC-Timestamp`.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn unix_seconds(&self) -> i64;
}

/// The real clocks.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_seconds(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

//! Rounding durations the way HTTP headers count them.

use std::time::Duration;

/// Whole seconds, rounded up: 0.4 s left is worth a `max-age=1`, and a `Retry-After` of 0 would
/// send a client straight back.
pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// What is left of a `Retry-After` of `told_secs` given `waited` ago, in whole seconds (at least
/// 1): the time a caller told it then still has to wait now.
pub(crate) fn retry_after_left(told_secs: u64, waited: Duration) -> u64 {
    told_secs.saturating_sub(waited.as_secs()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_only_partial_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(400)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2_001)), 3);
    }

    #[test]
    fn a_retry_after_told_earlier_counts_down_to_one() {
        assert_eq!(retry_after_left(48, Duration::from_millis(2_030)), 46);
        assert_eq!(retry_after_left(3, Duration::from_millis(2_999)), 1);
        assert_eq!(retry_after_left(2, Duration::from_secs(5)), 1);
    }
}

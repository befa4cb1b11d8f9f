//! Small tools every part uses and that know nothing of taskgate: the clock seam, files re-read
//! on change, poison-tolerant locks and whole-second rounding.

pub(crate) mod clock;
pub(crate) mod reload;
mod sync;
mod time;

pub(crate) use clock::{Clock, SystemClock};
pub(crate) use sync::lock;
pub(crate) use time::{ceil_secs, retry_after_left};

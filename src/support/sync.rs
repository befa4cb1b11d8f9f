//! Locks that survive a panic elsewhere.
//!
//! Every mutex in taskgate guards state that stays whole between statements (a map, a queue, a
//! counter), so a thread that panicked while holding one leaves nothing half-written behind. The
//! poison flag is therefore ignored rather than turned into a second panic on every later request.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering the guard if another thread panicked while holding it.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_hands_out_its_value() {
        let mutex = std::sync::Arc::new(Mutex::new(41));
        let poisoner = std::sync::Arc::clone(&mutex);
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poisoning on purpose");
        })
        .join();
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 42);
    }
}

//! A value read by every request and replaced whole now and then (credentials, caller tokens).
//!
//! Readers take an `Arc` of the current generation and keep it for as long as they need it; a
//! replacement swaps in the next generation in one step, so no reader ever sees half of one and
//! half of the other (an old SecretId with a new SecretKey, say).

use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct Swap<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swap<T> {
    pub fn new(value: T) -> Self {
        Self {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The current generation.
    pub fn current(&self) -> Arc<T> {
        // A poisoned lock still holds a whole generation (the swap is a single assignment).
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts the next generation in force.
    pub fn replace(&self, value: T) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

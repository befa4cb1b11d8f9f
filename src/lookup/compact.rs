//! The compact form of a final answer, as the local cache keeps it: 32 bytes a slot.
//!
//! - the upstream RequestId as its 16 bytes when it is a canonical lowercase UUID (what Tencent
//!   sends), written back to the same 36 characters on a hit; any other id (the demo upstream,
//!   fakes) is kept as text beside the slot;
//! - the description as the index of an interned text (SSM repeats a handful), each held once
//!   with its JSON form ready; past [`MAX_DESCRIPTIONS`] texts, or for a long one, kept as text
//!   beside the slot;
//! - the status (succeeded or failed) and when it was fetched, in nanoseconds from the cache's
//!   epoch.
//!
//! The flow id is not stored: it is the slot's place in its block (`blocks`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::answer::json_string;
use crate::support::lock;
use crate::task::TaskStatus;

/// Distinct descriptions interned at most; beyond, texts are kept with their answers.
pub(super) const MAX_DESCRIPTIONS: usize = 1024;
/// Longer descriptions are not interned (they are unlikely to repeat).
const MAX_INTERNED_LEN: usize = 256;

/// A canonical lowercase, hyphenated UUID (`8-4-4-4-12` hex digits) as its 16 bytes.
pub(super) fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let text = text.as_bytes();
    if text.len() != 36 {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut nibbles = 0;
    for (i, &c) in text.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let value = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        bytes[nibbles / 2] |= value << if nibbles % 2 == 0 { 4 } else { 0 };
        nibbles += 1;
    }
    Some(bytes)
}

/// The 36 characters [`parse_uuid`] read.
pub(super) fn format_uuid(bytes: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    text
}

/// An interned description: its text and its JSON string literal.
pub(super) struct Interned {
    pub text: Arc<str>,
    pub json: Box<str>,
}

/// The descriptions seen so far. Reading one (every hit) is one atomic load; interning (every
/// insert) takes a lock.
pub(super) struct Descriptions {
    table: Box<[OnceLock<Interned>]>,
    index: Mutex<HashMap<Arc<str>, u32>>,
}

impl Default for Descriptions {
    fn default() -> Self {
        Self {
            table: (0..MAX_DESCRIPTIONS).map(|_| OnceLock::new()).collect(),
            index: Mutex::new(HashMap::new()),
        }
    }
}

impl Descriptions {
    /// The index of `text`, interning it if there is room; `None` when it must be kept aside.
    pub(super) fn intern(&self, text: &Arc<str>) -> Option<u32> {
        if text.len() > MAX_INTERNED_LEN {
            return None;
        }
        let mut index = lock(&self.index);
        if let Some(&id) = index.get(text) {
            return Some(id);
        }
        let id = index.len();
        if id >= MAX_DESCRIPTIONS {
            return None;
        }
        let interned = Interned {
            text: Arc::clone(text),
            json: json_string(text).into_boxed_str(),
        };
        // Only ever set here, under the lock, at a fresh index.
        let _ = self.table[id].set(interned);
        index.insert(Arc::clone(text), id as u32);
        Some(id as u32)
    }

    pub(super) fn get(&self, id: u32) -> Option<&Interned> {
        self.table.get(id as usize)?.get()
    }

    /// Texts interned.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.index).len()
    }
}

/// Where a slot's RequestId is.
const REQUEST_ID_ASIDE: u8 = 1;
/// Where a slot's description is.
const DESCRIPTION_ASIDE: u8 = 2;
/// The status is failed (succeeded otherwise).
const FAILED: u8 = 4;

/// One final answer in 32 bytes. Texts that did not fit are in the block's `aside` list, at
/// the index the slot holds in their place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    /// Nanoseconds from the cache's epoch to when the upstream answered (negative: before it,
    /// for answers other replicas fetched).
    fetched_ns: i64,
    /// The UUID's bytes, or (aside) the index of the text in its first four bytes.
    request_id: [u8; 16],
    /// The interned index, or (aside) the index of the text.
    description: u32,
    flags: u8,
}

/// What a slot says, with its texts looked up.
pub(super) struct SlotView<'a> {
    pub status: TaskStatus,
    pub fetched_at: Instant,
    pub request_id: RequestIdText<'a>,
    pub description: DescriptionText<'a>,
}

pub(super) enum RequestIdText<'a> {
    Uuid([u8; 36]),
    Aside(&'a Arc<str>),
}

pub(super) enum DescriptionText<'a> {
    Interned(&'a Interned),
    Aside(&'a Arc<str>),
}

/// A final answer's texts as a slot will keep them: in the slot or aside.
pub(super) struct SlotParts {
    pub slot: Slot,
    pub request_id_aside: Option<Arc<str>>,
    pub description_aside: Option<Arc<str>>,
}

/// Converts between instants and a slot's nanoseconds.
#[derive(Clone, Copy)]
pub(super) struct Epoch(pub Instant);

impl Epoch {
    fn encode(self, at: Instant) -> i64 {
        match at.checked_duration_since(self.0) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => -i64::try_from((self.0 - at).as_nanos()).unwrap_or(i64::MAX),
        }
    }

    pub(super) fn decode(self, ns: i64) -> Instant {
        let magnitude = Duration::from_nanos(ns.unsigned_abs());
        if ns >= 0 {
            self.0 + magnitude
        } else {
            self.0.checked_sub(magnitude).unwrap_or(self.0)
        }
    }
}

impl Slot {
    /// The compact form of a final answer (the texts that do not fit come back aside).
    pub(super) fn of(
        status: TaskStatus,
        description: &Arc<str>,
        request_id: &Arc<str>,
        fetched_at: Instant,
        epoch: Epoch,
        descriptions: &Descriptions,
    ) -> SlotParts {
        let mut flags = if status == TaskStatus::Failed {
            FAILED
        } else {
            0
        };
        let (request_id_bytes, request_id_aside) = match parse_uuid(request_id) {
            Some(bytes) => (bytes, None),
            None => {
                flags |= REQUEST_ID_ASIDE;
                ([0; 16], Some(Arc::clone(request_id)))
            }
        };
        let (description_id, description_aside) = match descriptions.intern(description) {
            Some(id) => (id, None),
            None => {
                flags |= DESCRIPTION_ASIDE;
                (0, Some(Arc::clone(description)))
            }
        };
        SlotParts {
            slot: Slot {
                fetched_ns: epoch.encode(fetched_at),
                request_id: request_id_bytes,
                description: description_id,
                flags,
            },
            request_id_aside,
            description_aside,
        }
    }

    pub(super) fn fetched_at(&self, epoch: Epoch) -> Instant {
        epoch.decode(self.fetched_ns)
    }

    pub(super) fn request_id_aside(&self) -> Option<usize> {
        (self.flags & REQUEST_ID_ASIDE != 0).then(|| {
            let index: [u8; 4] = self.request_id[..4].try_into().expect("four bytes");
            u32::from_le_bytes(index) as usize
        })
    }

    pub(super) fn description_aside(&self) -> Option<usize> {
        (self.flags & DESCRIPTION_ASIDE != 0).then_some(self.description as usize)
    }

    /// The same slot with its aside texts at new indices (when its block is rebuilt).
    pub(super) fn with_aside(
        mut self,
        request_id: Option<usize>,
        description: Option<usize>,
    ) -> Self {
        if let Some(index) = request_id {
            self.request_id = [0; 16];
            self.request_id[..4].copy_from_slice(&(index as u32).to_le_bytes());
        }
        if let Some(index) = description {
            self.description = index as u32;
        }
        self
    }

    /// What the slot says, its texts looked up in `aside` and `descriptions`; `None` if one is
    /// missing (never, for slots made by [`Slot::of`] and kept by their block).
    pub(super) fn view<'a>(
        &self,
        epoch: Epoch,
        aside: &'a [Arc<str>],
        descriptions: &'a Descriptions,
    ) -> Option<SlotView<'a>> {
        let request_id = match self.request_id_aside() {
            Some(index) => RequestIdText::Aside(aside.get(index)?),
            None => RequestIdText::Uuid(format_uuid(&self.request_id)),
        };
        let description = match self.description_aside() {
            Some(index) => DescriptionText::Aside(aside.get(index)?),
            None => DescriptionText::Interned(descriptions.get(self.description)?),
        };
        Some(SlotView {
            status: if self.flags & FAILED != 0 {
                TaskStatus::Failed
            } else {
                TaskStatus::Succeeded
            },
            fetched_at: self.fetched_at(epoch),
            request_id,
            description,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slot_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    #[test]
    fn uuids_round_trip_and_nothing_else_parses() {
        let text = "6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
        let bytes = parse_uuid(text).unwrap();
        assert_eq!(&format_uuid(&bytes), text.as_bytes());
        for other in [
            "6F1A2B3C-0D4E-4F5A-8B6C-7D8E9F0A1B2C",
            "6f1a2b3c0d4e4f5a8b6c7d8e9f0a1b2c",
            "6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2",
            "6f1a2b3c-0d4e-4f5a-8b6c_7d8e9f0a1b2c",
            "demo-0000abcd-1234-5678",
            "",
            "x",
        ] {
            assert_eq!(parse_uuid(other), None, "{other}");
        }
    }

    #[test]
    fn descriptions_are_interned_once_and_overflow_goes_aside() {
        let descriptions = Descriptions::default();
        let a: Arc<str> = Arc::from("task succeeded");
        assert_eq!(descriptions.intern(&a), Some(0));
        assert_eq!(descriptions.intern(&Arc::from("task succeeded")), Some(0));
        assert_eq!(
            descriptions.get(0).unwrap().json.as_ref(),
            "\"task succeeded\""
        );
        assert_eq!(descriptions.intern(&Arc::from("x".repeat(300))), None);
        for i in 1..MAX_DESCRIPTIONS {
            assert!(descriptions
                .intern(&Arc::from(format!("text {i}")))
                .is_some());
        }
        assert_eq!(descriptions.intern(&Arc::from("one too many")), None);
        assert_eq!(descriptions.len(), MAX_DESCRIPTIONS);
    }

    proptest! {
        #[test]
        fn any_uuid_round_trips(bytes in any::<[u8; 16]>()) {
            let text = format_uuid(&bytes);
            prop_assert_eq!(parse_uuid(std::str::from_utf8(&text).unwrap()), Some(bytes));
        }

        #[test]
        fn instants_round_trip_around_the_epoch(offset_ms in -86_400_000i64..86_400_000_000) {
            let base = Instant::now() + Duration::from_secs(100_000);
            let epoch = Epoch(base);
            let at = if offset_ms >= 0 {
                base + Duration::from_millis(offset_ms as u64)
            } else {
                base - Duration::from_millis(offset_ms.unsigned_abs())
            };
            prop_assert_eq!(epoch.decode(epoch.encode(at)), at);
        }
    }
}

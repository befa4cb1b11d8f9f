//! Blocks of neighbouring final answers: one cache entry holds the compact answers of up to
//! [`BLOCK_IDS`] consecutive flow ids, so the cache's own cost per entry (about 400 bytes in
//! moka) is shared by all the answers of a block.
//!
//! A block is immutable: adding an answer builds a new block (at most 64 slots of 32 bytes
//! copied) which replaces the old one in one atomic step of the cache. Slots are kept densely,
//! in flow-id order, behind a bitmap of the ids present, so a block holding one answer costs
//! one slot, not 64. [`Block::heap_bytes`] is what the block really occupies on the heap,
//! allocator rounding included, and is what the cache's weigher counts.

use std::sync::Arc;

use super::compact::{Slot, SlotParts};
use crate::task::FlowId;

/// Flow ids per block.
pub(super) const BLOCK_IDS: u64 = 64;

/// Which block a flow id belongs to, and its place in it.
pub(super) fn block_of(flow_id: FlowId) -> (u64, u32) {
    let id = flow_id.get() as u64;
    (id / BLOCK_IDS, (id % BLOCK_IDS) as u32)
}

/// Heap bytes an allocation of `size` bytes occupies: glibc's malloc rounding (8 bytes of
/// header, 16-byte granules, 32 bytes at least), which is at or above mimalloc's size classes
/// (the allocator the binary ships), so the weight errs on the heavy side; checked against RSS
/// by `bench/cache_memory.sh`.
pub(super) fn allocated(size: usize) -> usize {
    if size == 0 {
        return 0;
    }
    (size + 8).div_ceil(16).max(2) * 16
}

/// The compact final answers of one block of flow ids.
#[derive(Debug, Default)]
pub(super) struct Block {
    /// Bit `i`: the block holds an answer for its `i`th flow id.
    present: u64,
    /// One slot per bit set in `present`, in bit order.
    slots: Box<[Slot]>,
    /// Texts that did not fit in their slots (non-UUID request ids, descriptions not interned).
    aside: Box<[Arc<str>]>,
}

impl Block {
    /// Answers held.
    pub(super) fn len(&self) -> usize {
        self.present.count_ones() as usize
    }

    pub(super) fn get(&self, index: u32) -> Option<&Slot> {
        let bit = 1u64 << index;
        if self.present & bit == 0 {
            return None;
        }
        let rank = (self.present & (bit - 1)).count_ones() as usize;
        self.slots.get(rank)
    }

    pub(super) fn aside(&self) -> &[Arc<str>] {
        &self.aside
    }

    pub(super) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// A new block: this one with `parts` at `index` (replacing what was there), keeping only
    /// the other slots for which `keep` says yes (expired ones are dropped on the way).
    pub(super) fn with(&self, index: u32, parts: SlotParts, keep: impl Fn(&Slot) -> bool) -> Self {
        let mut present = 0u64;
        let mut slots = Vec::with_capacity(self.len() + 1);
        let mut aside: Vec<Arc<str>> = Vec::new();
        let mut new = Some(parts);
        let mut old = self.slots.iter();
        let mut bits = self.present | (1u64 << index);
        while bits != 0 {
            let i = bits.trailing_zeros();
            bits &= bits - 1;
            let existing = (self.present & (1u64 << i) != 0)
                .then(|| old.next())
                .flatten();
            if i == index {
                let parts = new.take().expect("one new slot");
                let request_id = parts.request_id_aside.map(|text| push(&mut aside, text));
                let description = parts.description_aside.map(|text| push(&mut aside, text));
                slots.push(parts.slot.with_aside(request_id, description));
                present |= 1u64 << i;
            } else if let Some(slot) = existing.filter(|slot| keep(slot)) {
                let request_id = slot
                    .request_id_aside()
                    .map(|at| push(&mut aside, Arc::clone(&self.aside[at])));
                let description = slot
                    .description_aside()
                    .map(|at| push(&mut aside, Arc::clone(&self.aside[at])));
                slots.push(slot.with_aside(request_id, description));
                present |= 1u64 << i;
            }
        }
        Self {
            present,
            slots: slots.into_boxed_slice(),
            aside: aside.into_boxed_slice(),
        }
    }

    /// What the block occupies on the heap beyond the cache's entry: its own allocation (behind
    /// an `Arc`), its slots and its aside texts.
    pub(super) fn heap_bytes(&self) -> usize {
        let arc = allocated(std::mem::size_of::<Block>() + 2 * std::mem::size_of::<usize>());
        let slots = allocated(std::mem::size_of_val::<[Slot]>(&self.slots));
        let aside = allocated(std::mem::size_of_val::<[Arc<str>]>(&self.aside))
            + self
                .aside
                .iter()
                .map(|text| allocated(text.len() + 2 * std::mem::size_of::<usize>()))
                .sum::<usize>();
        arc + slots + aside
    }
}

fn push(aside: &mut Vec<Arc<str>>, text: Arc<str>) -> usize {
    aside.push(text);
    aside.len() - 1
}

#[cfg(test)]
mod tests {
    use super::super::compact::{Descriptions, Epoch, RequestIdText};
    use super::*;
    use crate::task::TaskStatus;
    use tokio::time::Instant;

    fn parts(descriptions: &Descriptions, epoch: Epoch, request_id: &str) -> SlotParts {
        Slot::of(
            TaskStatus::Succeeded,
            &Arc::from("task succeeded"),
            &Arc::from(request_id),
            epoch.0,
            epoch,
            descriptions,
        )
    }

    #[test]
    fn slots_are_found_by_their_flow_id_and_replaced_in_place() {
        let descriptions = Descriptions::default();
        let epoch = Epoch(Instant::now());
        let uuid = "6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
        let mut block = Block::default();
        for index in [63, 0, 17, 5] {
            block = block.with(index, parts(&descriptions, epoch, uuid), |_| true);
        }
        assert_eq!(block.len(), 4);
        assert_eq!(block.slots.len(), 4);
        assert!(block.get(1).is_none());
        // A non-UUID id goes aside, and stays with its slot when others come and go.
        block = block.with(17, parts(&descriptions, epoch, "demo-1"), |_| true);
        block = block.with(3, parts(&descriptions, epoch, "demo-3"), |_| true);
        block = block.with(0, parts(&descriptions, epoch, uuid), |_| true);
        assert_eq!(block.len(), 5);
        for (index, expected) in [(17, "demo-1"), (3, "demo-3")] {
            let view = block
                .get(index)
                .unwrap()
                .view(epoch, block.aside(), &descriptions)
                .unwrap();
            assert!(matches!(view.request_id, RequestIdText::Aside(text) if &**text == expected));
        }
        let view = block
            .get(63)
            .unwrap()
            .view(epoch, block.aside(), &descriptions);
        assert!(
            matches!(view.unwrap().request_id, RequestIdText::Uuid(text) if text == uuid.as_bytes())
        );
        // Pruning keeps what `keep` says, and the new slot always.
        let pruned = block.with(40, parts(&descriptions, epoch, "demo-40"), |_| false);
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned.aside().len(), 1);
        assert!(pruned.get(40).is_some());
    }

    #[test]
    fn weight_grows_with_slots_and_rounds_like_malloc() {
        assert_eq!(allocated(1), 32);
        assert_eq!(allocated(24), 32);
        assert_eq!(allocated(25), 48);
        assert_eq!(allocated(32), 48);
        let descriptions = Descriptions::default();
        let epoch = Epoch(Instant::now());
        let one = Block::default().with(0, parts(&descriptions, epoch, "demo"), |_| true);
        let two = one.with(1, parts(&descriptions, epoch, "demo"), |_| true);
        assert!(two.heap_bytes() > one.heap_bytes());
        assert_eq!(block_of(FlowId::new(130).unwrap()), (2, 2));
    }
}

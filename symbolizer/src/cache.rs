//! The bounded result cache: (key, file offset) -> symbolization result, CLOCK eviction. The key
//! names the file(s) a result was computed from: a build ID as seen by one scope (tenant).
//!
//! CLOCK (second chance) approximates LRU with one bit per entry and no list to relink on every
//! hit, which matters because hits are the common case and happen under a mutex shared by all
//! symbolizing threads. Written here rather than pulled in: it is ~100 lines and needs one thing
//! off-the-shelf LRU crates make awkward, dropping every entry of one key (`remove_key`).

use std::collections::HashMap;
use std::hash::Hash;

struct Slot<K, V> {
    id: K,
    offset: u64,
    value: V,
    /// Set on every hit; the clock hand clears it once before evicting ("second chance").
    referenced: bool,
}

pub(crate) struct ResultCache<K, V> {
    capacity: usize,
    /// Two levels so that lookups borrow the key instead of building a `(K, u64)` one.
    index: HashMap<K, HashMap<u64, usize>>,
    slots: Vec<Slot<K, V>>,
    hand: usize,
}

impl<K: Clone + Eq + Hash, V> ResultCache<K, V> {
    /// A cache holding at most `capacity` entries (0 disables caching).
    pub(crate) fn new(capacity: usize) -> Self {
        ResultCache {
            capacity,
            index: HashMap::new(),
            // Grows on demand: a large configured bound should not cost memory up front.
            slots: Vec::new(),
            hand: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn get(&mut self, id: &K, offset: u64) -> Option<&V> {
        let &i = self.index.get(id)?.get(&offset)?;
        let slot = self.slots.get_mut(i)?;
        slot.referenced = true;
        Some(&slot.value)
    }

    pub(crate) fn insert(&mut self, id: &K, offset: u64, value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&i) = self.index.get(id).and_then(|m| m.get(&offset))
            && let Some(slot) = self.slots.get_mut(i)
        {
            slot.value = value;
            slot.referenced = true;
            return;
        }
        let slot = Slot {
            id: id.clone(),
            offset,
            value,
            // New entries start unreferenced: one-off offsets (a single odd sample) should be the
            // first to go, not displace entries that were hit before.
            referenced: false,
        };
        let i = if self.slots.len() < self.capacity {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let victim = self.find_victim();
            let old = std::mem::replace(&mut self.slots[victim], slot);
            self.unindex(&old.id, old.offset);
            victim
        };
        self.index.entry(id.clone()).or_default().insert(offset, i);
    }

    /// Drops every entry whose key satisfies `doomed`.
    pub(crate) fn remove_where(&mut self, doomed: impl Fn(&K) -> bool) {
        let keys: Vec<K> = self.index.keys().filter(|k| doomed(k)).cloned().collect();
        for k in keys {
            self.remove_key(&k);
        }
    }

    /// Drops every entry for `id`.
    pub(crate) fn remove_key(&mut self, id: &K) {
        let Some(offsets) = self.index.remove(id) else {
            return;
        };
        // Highest position first: swap_remove moves the last slot into the hole, and since every
        // slot of ours above the hole is already gone, the moved slot is never one still to remove.
        let mut positions: Vec<usize> = offsets.into_values().collect();
        positions.sort_unstable_by(|a, b| b.cmp(a));
        for i in positions {
            self.slots.swap_remove(i);
            // The former last slot now sits at `i` (unless `i` was last): point its index there.
            if let Some(moved) = self.slots.get(i)
                && let Some(pos) = self
                    .index
                    .get_mut(&moved.id)
                    .and_then(|m| m.get_mut(&moved.offset))
            {
                *pos = i;
            }
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    fn find_victim(&mut self) -> usize {
        // Terminates within two sweeps: the first clears every referenced bit it passes.
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let slot = &mut self.slots[i];
            if slot.referenced {
                slot.referenced = false;
            } else {
                return i;
            }
        }
    }

    fn unindex(&mut self, id: &K, offset: u64) {
        if let Some(m) = self.index.get_mut(id) {
            m.remove(&offset);
            if m.is_empty() {
                self.index.remove(id);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::build_id::BuildId;

    fn id(s: &str) -> BuildId {
        BuildId::parse(s).unwrap()
    }

    /// Every index entry points at a slot holding that key, and every slot is indexed.
    fn check_consistent<V>(c: &ResultCache<BuildId, V>) {
        let mut n = 0;
        for (bid, m) in &c.index {
            for (&off, &i) in m {
                assert_eq!(&c.slots[i].id, bid);
                assert_eq!(c.slots[i].offset, off);
                n += 1;
            }
        }
        assert_eq!(n, c.slots.len());
        assert!(c.slots.len() <= c.capacity);
    }

    #[test]
    fn bounded_by_capacity() {
        let a = id("aa");
        let mut c = ResultCache::new(10);
        for off in 0..1000u64 {
            c.insert(&a, off, off * 2);
            assert!(c.len() <= 10);
        }
        assert_eq!(c.len(), 10);
        check_consistent(&c);
        // The most recent insert survives.
        assert_eq!(c.get(&a, 999), Some(&1998));
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut c = ResultCache::new(0);
        c.insert(&id("aa"), 1, 1);
        assert_eq!(c.len(), 0);
        assert_eq!(c.get(&id("aa"), 1), None);
    }

    #[test]
    fn hot_entries_survive_a_scan() {
        let a = id("aa");
        let mut c = ResultCache::new(4);
        c.insert(&a, 1, "hot");
        for off in 100..120u64 {
            // Hit the hot entry between one-off inserts, as a profile's hot function would be.
            assert_eq!(c.get(&a, 1), Some(&"hot"));
            c.insert(&a, off, "cold");
        }
        assert_eq!(c.get(&a, 1), Some(&"hot"));
        check_consistent(&c);
    }

    #[test]
    fn reinsert_replaces_value() {
        let a = id("aa");
        let mut c = ResultCache::new(4);
        c.insert(&a, 1, 1);
        c.insert(&a, 1, 2);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&a, 1), Some(&2));
    }

    #[test]
    fn remove_build_id_drops_only_that_id() {
        let (a, b) = (id("aa"), id("bb"));
        let mut c = ResultCache::new(100);
        for off in 0..30u64 {
            // Interleaved so removals hit slots in the middle as well as the end.
            c.insert(&a, off, off);
            c.insert(&b, off, off + 1000);
        }
        c.remove_key(&a);
        check_consistent(&c);
        assert_eq!(c.len(), 30);
        for off in 0..30u64 {
            assert_eq!(c.get(&a, off), None);
            assert_eq!(c.get(&b, off), Some(&(off + 1000)));
        }
        // Still usable and bounded afterwards.
        for off in 0..200u64 {
            c.insert(&a, off, off);
        }
        check_consistent(&c);
        assert_eq!(c.len(), 100);
    }
}

//! Stacks already unwound, reused when a sample would unwind to exactly the same frames.
//!
//! A walk is a pure function of the process's unwinder (its modules' CFI), the sampled ip, sp and
//! bp, the length of the stack copy, and the stack words the walk read: each read's address follows
//! from the registers and the words read before it, each rule from the tables. So when a sample
//! has the same unwinder, registers and copy length as a stack walked before, and every word that
//! walk read (recorded as offsets from sp) holds the same value in this sample's copy, its walk
//! would take the same steps to the same frames and the same end. [`StackMemo::lookup`] checks
//! exactly that, so a hit is never a guess.
//!
//! Why: a CPU profile is dominated by hot loops, sampled again and again in the same call with the
//! same stack. Checking ~2 words per frame is a handful of independent loads; walking runs a rule
//! lookup and an indirect dispatch per frame (framehop: ~20 ns a frame when warm), dependent
//! loads one after the other.
//!
//! Bounded: [`MEMO_SLOTS`] slots in sets of two (a stack may sit in either slot of its set; a new
//! one replaces the slot hit less recently), stacks reading more than [`MAX_MEMO_READS`] words are
//! not kept: at most ~2.6 MiB when every slot holds such a stack, a few hundred KiB in practice.
//! Two ways because one collided too often: in the unwind bench's 95 stacks, 8 shared a slot
//! with another and missed on every pass (91.6 % hits).

use super::StackEnd;
use kiln_sampler_bpf::UserRegs;

/// Slots in the memo (a power of two).
pub const MEMO_SLOTS: usize = 1024;
const _: () = assert!(MEMO_SLOTS.is_power_of_two());
/// Stacks whose walk read more words than this are not memoized.
pub const MAX_MEMO_READS: usize = 128;

/// What a walk depends on besides the words it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoKey {
    /// Identifies one process unwinder (one snapshot of one process's mappings).
    pub unwinder: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub copy_len: usize,
}

impl MemoKey {
    pub fn new(unwinder: u64, regs: UserRegs, copy_len: usize) -> Self {
        MemoKey {
            unwinder,
            ip: regs.ip,
            sp: regs.sp,
            bp: regs.bp,
            copy_len,
        }
    }

    /// The first slot of this key's set of two.
    fn set(&self) -> usize {
        let mut h = self.unwinder;
        for v in [self.ip, self.sp, self.bp, self.copy_len as u64] {
            h = (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        }
        let sets = MEMO_SLOTS / 2;
        2 * (h >> (64 - sets.trailing_zeros())) as usize
    }
}

/// One stack word a walk read: its offset from sp in the copy and its value.
pub type Read = (u32, u64);

struct Entry {
    key: MemoKey,
    reads: Vec<Read>,
    frames: Vec<u64>,
    end: StackEnd,
}

/// See the module documentation.
pub struct StackMemo {
    slots: Box<[Option<Entry>]>,
    /// Per set, the way (0 or 1) hit or stored last.
    recent: Box<[u8]>,
    hits: u64,
    lookups: u64,
}

impl Default for StackMemo {
    fn default() -> Self {
        StackMemo {
            slots: (0..MEMO_SLOTS).map(|_| None).collect(),
            recent: vec![0; MEMO_SLOTS / 2].into_boxed_slice(),
            hits: 0,
            lookups: 0,
        }
    }
}

impl StackMemo {
    /// The stack a walk of this sample would give, if a stack walked before provably matches: its
    /// frames into `frames` (cleared first), its end returned.
    pub fn lookup(
        &mut self,
        key: &MemoKey,
        stack: &[u8],
        frames: &mut Vec<u64>,
    ) -> Option<StackEnd> {
        self.lookups += 1;
        let set = key.set();
        let way = self.way_of(set, key)?;
        let e = self.slots[set + way].as_ref()?;
        let same = e.reads.iter().all(|&(off, value)| {
            let off = off as usize;
            stack
                .get(off..off + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                == Some(value)
        });
        if !same {
            return None;
        }
        self.hits += 1;
        self.recent[set / 2] = way as u8;
        frames.clear();
        frames.extend_from_slice(&e.frames);
        Some(e.end)
    }

    /// Remembers the result of a walk and the words it read.
    pub fn store(&mut self, key: MemoKey, reads: &[Read], frames: &[u64], end: StackEnd) {
        if reads.len() > MAX_MEMO_READS {
            return;
        }
        let set = key.set();
        // The key's own slot (its earlier walk no longer matched), else the less recent one.
        let way = self
            .way_of(set, &key)
            .unwrap_or(1 - usize::from(self.recent[set / 2]));
        self.recent[set / 2] = way as u8;
        match &mut self.slots[set + way] {
            // Reuse the slot's buffers: no allocation once the memo is warm.
            Some(e) => {
                e.key = key;
                e.reads.clear();
                e.reads.extend_from_slice(reads);
                e.frames.clear();
                e.frames.extend_from_slice(frames);
                e.end = end;
            }
            slot @ None => {
                *slot = Some(Entry {
                    key,
                    reads: reads.to_vec(),
                    frames: frames.to_vec(),
                    end,
                })
            }
        }
    }

    /// The way (0 or 1) of set `set` holding `key`.
    fn way_of(&self, set: usize, key: &MemoKey) -> Option<usize> {
        (0..2).find(|&w| self.slots[set + w].as_ref().is_some_and(|e| e.key == *key))
    }

    /// (hits, lookups) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::{RuleCache, Truncation, Unwound, unwind_logged};
    use framehop::x86_64::UnwinderX86_64;

    const SP: u64 = 0x7fff_0000;

    /// A frame-pointer chain of two callers above `SP` (no modules: framehop walks frame pointers),
    /// ending in a zero saved bp (the root), plus a word no walk reads.
    fn stack() -> Vec<u8> {
        let mut s = vec![0u8; 128];
        let mut put = |off: usize, v: u64| s[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put(16, SP + 48); // frame 1: saved bp
        put(24, 0x40_2000); // return address into the caller
        put(48, 0); // frame 2: saved bp 0, the root
        put(56, 0x40_3000);
        put(96, 0xdead); // not part of the chain
        s
    }

    fn regs() -> UserRegs {
        UserRegs {
            ip: 0x40_1000,
            sp: SP,
            bp: SP + 16,
        }
    }

    /// Walks `stack` and looks it up in `memo` after storing that walk under `key`.
    fn walk_and_store(memo: &mut StackMemo, key: MemoKey, stack: &[u8]) -> Unwound {
        let (u, mut reads, mut frames) = (UnwinderX86_64::new(), Vec::new(), Vec::new());
        let end = unwind_logged(
            &u,
            &mut RuleCache::default(),
            regs(),
            stack,
            &mut reads,
            &mut frames,
            None,
            None,
        );
        assert!(!reads.is_empty());
        memo.store(key, &reads, &frames, end);
        Unwound { frames, end }
    }

    /// `memo.lookup` as an [`Unwound`].
    fn lookup(memo: &mut StackMemo, key: &MemoKey, stack: &[u8]) -> Option<Unwound> {
        let mut frames = vec![0xbad]; // cleared by a hit
        let end = memo.lookup(key, stack, &mut frames)?;
        Some(Unwound { frames, end })
    }

    #[test]
    fn the_same_stack_comes_back_from_the_memo() {
        let (mut memo, s) = (StackMemo::default(), stack());
        let key = MemoKey::new(1, regs(), s.len());
        assert_eq!(lookup(&mut memo, &key, &s), None, "empty memo");
        let walked = walk_and_store(&mut memo, key, &s);
        assert_eq!(walked.frames, vec![0x40_1000, 0x40_2000, 0x40_3000]);
        assert_eq!(lookup(&mut memo, &key, &s), Some(walked.clone()));
        // A word the walk never read may differ.
        let mut other = s.clone();
        other[96] = 0xbe;
        assert_eq!(lookup(&mut memo, &key, &other), Some(walked));
        assert_eq!(memo.stats(), (2, 3));
    }

    #[test]
    fn a_changed_word_that_was_read_means_a_fresh_walk() {
        let (mut memo, s) = (StackMemo::default(), stack());
        let key = MemoKey::new(1, regs(), s.len());
        walk_and_store(&mut memo, key, &s);
        // Another caller: the return address of frame 1 changed.
        let mut other = s.clone();
        other[24..32].copy_from_slice(&0x40_2222u64.to_le_bytes());
        assert_eq!(lookup(&mut memo, &key, &other), None);
        // The saved bp of frame 1 changed: the chain goes elsewhere.
        let mut other = s.clone();
        other[16..24].copy_from_slice(&(SP + 64).to_le_bytes());
        assert_eq!(lookup(&mut memo, &key, &other), None);
    }

    #[test]
    fn registers_unwinder_and_copy_length_are_part_of_the_key() {
        let (mut memo, s) = (StackMemo::default(), stack());
        let key = MemoKey::new(1, regs(), s.len());
        walk_and_store(&mut memo, key, &s);
        let other_ip = UserRegs {
            ip: 0x40_1004,
            ..regs()
        };
        for k in [
            MemoKey::new(2, regs(), s.len()),
            MemoKey::new(1, other_ip, s.len()),
            // A shorter copy may cut the walk where the longer one went on.
            MemoKey::new(1, regs(), 40),
        ] {
            assert_eq!(lookup(&mut memo, &k, &s[..k.copy_len]), None, "{k:?}");
        }
    }

    #[test]
    fn a_truncated_walk_is_remembered_with_its_end() {
        let mut memo = StackMemo::default();
        let s = stack()[..40].to_vec(); // frame 2's saved bp is beyond the copy
        let key = MemoKey::new(1, regs(), s.len());
        let walked = walk_and_store(&mut memo, key, &s);
        assert_eq!(
            walked.end,
            StackEnd::Truncated(Truncation::CopyExhausted),
            "{walked:?}"
        );
        assert_eq!(lookup(&mut memo, &key, &s), Some(walked));
    }

    #[test]
    fn two_stacks_of_one_set_are_both_kept_and_a_third_evicts_the_older() {
        let s = stack();
        let (u, mut reads, mut frames) = (UnwinderX86_64::new(), Vec::new(), Vec::new());
        let end = unwind_logged(
            &u,
            &mut RuleCache::default(),
            regs(),
            &s,
            &mut reads,
            &mut frames,
            None,
            None,
        );
        // Keys (unwinder ids) whose sets are the same as unwinder 1's.
        let first = MemoKey::new(1, regs(), s.len());
        let same_set: Vec<MemoKey> = (2..100_000)
            .map(|id| MemoKey::new(id, regs(), s.len()))
            .filter(|k| k.set() == first.set())
            .take(2)
            .collect();
        let (second, third) = (same_set[0], same_set[1]);
        let mut memo = StackMemo::default();
        memo.store(first, &reads, &frames, end);
        memo.store(second, &reads, &frames, end);
        assert!(lookup(&mut memo, &first, &s).is_some());
        assert!(lookup(&mut memo, &second, &s).is_some());
        // `second` was hit last: `third` replaces `first`.
        memo.store(third, &reads, &frames, end);
        assert!(lookup(&mut memo, &third, &s).is_some());
        assert!(lookup(&mut memo, &second, &s).is_some());
        assert!(lookup(&mut memo, &first, &s).is_none());
    }

    #[test]
    fn walks_reading_too_many_words_are_not_kept() {
        let mut memo = StackMemo::default();
        let s = stack();
        let key = MemoKey::new(1, regs(), s.len());
        let reads: Vec<Read> = (0..=MAX_MEMO_READS as u32).map(|i| (i * 8, 0)).collect();
        memo.store(key, &reads, &[1], StackEnd::Complete);
        assert_eq!(lookup(&mut memo, &key, &s), None);
    }
}

//! The JVM's code cache: which code blob holds an address, how large its frame is, and which
//! (possibly inlined) methods a compiled pc was running.
//!
//! HotSpot keeps JIT code in one or more `CodeHeap`s. Each heap has a segment map: one byte per
//! segment (`1 << _log2_segment_size` bytes), 0 at the first segment of a block, otherwise how
//! many segments to step back towards it, 0xFF for an unused segment. A block starts with a
//! `HeapBlock` header; the `CodeBlob` follows it. Compiled methods (`nmethod`) carry `PcDesc`s
//! (pc offset → scope) and a compressed stream of `ScopeDesc`s whose chain, innermost first, lists
//! the methods inlined at that pc with their bytecode index.

use super::mem::{Mem, Unreadable};
use super::vmstructs::Offsets;

/// Most steps back through a segment map (each at most 254 segments).
const MAX_SEGMAP_HOPS: usize = 256;
/// Largest `PcDesc` table read (bytes); a larger one names the nmethod's own method only.
const MAX_PC_DESC_BYTES: u64 = 256 << 10;
/// Most inlined scopes followed at one pc.
const MAX_SCOPES: usize = 32;
/// A segment map byte that marks an unused segment.
const FREE_SEGMENT: u8 = 0xFF;

/// One code heap's address range and segment map.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    pub low: u64,
    pub high: u64,
    pub segmap: u64,
    pub log2_segment: u32,
}

/// What kind of code a blob holds, which decides how its frames are stepped over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// A compiled Java method (C1, C2, or a native-method wrapper): fixed frame size.
    Nmethod { method: u64, compile_id: u32 },
    /// The template interpreter: frames linked by rbp, Method* and bcp at fixed slots.
    Interpreter,
    /// Stubs and adapters: fixed frame size when they have one, else linked by rbp.
    Stub,
}

/// A code blob, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blob {
    pub start: u64,
    pub code_begin: u64,
    pub code_end: u64,
    /// In words, return address and saved rbp included (0: none).
    pub frame_words: u32,
    pub kind: BlobKind,
}

/// The code heaps (read once the JVM has set them up).
pub fn read_heaps(mem: &Mem, o: &Offsets) -> Result<Vec<Heap>, Unreadable> {
    let array = mem.u64(o.code_cache_heaps)?;
    let len = mem.u32(array + o.growable_len)? as u64;
    let data = mem.u64(array + o.growable_data)?;
    let mut heaps = Vec::new();
    for i in 0..len.min(16) {
        let h = mem.u64(data + i * 8)?;
        heaps.push(Heap {
            low: mem.u64(h + o.heap_memory + o.vs_low)?,
            high: mem.u64(h + o.heap_memory + o.vs_high)?,
            segmap: mem.u64(h + o.heap_segmap + o.vs_low)?,
            log2_segment: mem.u32(h + o.heap_log2_segment_size)?,
        });
    }
    Ok(heaps)
}

/// The blob that holds `pc`, or `None` when `pc` is in no heap or in free space.
pub fn find_blob(
    mem: &Mem,
    o: &Offsets,
    heaps: &[Heap],
    names: &mut impl FnMut(u64) -> Option<BlobKindName>,
    pc: u64,
) -> Result<Option<Blob>, Unreadable> {
    let Some(h) = heaps.iter().find(|h| (h.low..h.high).contains(&pc)) else {
        return Ok(None);
    };
    if h.log2_segment > 16 {
        return Err(Unreadable);
    }
    let mut seg = (pc - h.low) >> h.log2_segment;
    let mut hops = 0;
    loop {
        let b = mem.u8(h.segmap + seg)?;
        if b == FREE_SEGMENT {
            return Ok(None);
        }
        if b == 0 {
            break;
        }
        hops += 1;
        if hops > MAX_SEGMAP_HOPS || u64::from(b) > seg {
            return Err(Unreadable);
        }
        seg -= u64::from(b);
    }
    let start = h.low + (seg << h.log2_segment) + o.heap_block_size;
    let code_begin = mem.u64(start + o.blob_code_begin)?;
    let code_end = mem.u64(start + o.blob_code_end)?;
    if !(code_begin..code_end).contains(&pc) && pc != code_end {
        // Header or data of the blob, not its code (or a blob freed and reused meanwhile).
        return Ok(None);
    }
    let frame_words = mem.u32(start + o.blob_frame_size)?;
    let kind = match names(mem.u64(start + o.blob_name)?) {
        Some(BlobKindName::Nmethod) => BlobKind::Nmethod {
            method: mem.u64(start + o.compiled_method)?,
            compile_id: mem.u32(start + o.nmethod_compile_id)?,
        },
        Some(BlobKindName::Interpreter) => BlobKind::Interpreter,
        _ => BlobKind::Stub,
    };
    Ok(Some(Blob {
        start,
        code_begin,
        code_end,
        frame_words: if frame_words > 1 << 20 {
            0
        } else {
            frame_words
        },
        kind,
    }))
}

/// A blob's kind as its name tells it (`CodeBlob::_name` is a static string per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKindName {
    Nmethod,
    Interpreter,
    Other,
}

impl BlobKindName {
    pub fn of(name: &str) -> BlobKindName {
        match name {
            "nmethod" | "native nmethod" => BlobKindName::Nmethod,
            "Interpreter" => BlobKindName::Interpreter,
            _ => BlobKindName::Other,
        }
    }
}

/// HotSpot's UNSIGNED5 integer coding (`CompressedReadStream::read_int`): bytes below 192 end a
/// number, each byte from 192 on carries 6 more bits; at most 5 bytes.
pub fn read_unsigned5(data: &[u8], pos: &mut usize) -> Option<u32> {
    const L: u32 = 192;
    let b0 = u32::from(*data.get(*pos)?);
    *pos += 1;
    if b0 < L {
        return Some(b0);
    }
    let mut sum = b0;
    let mut shift = 6;
    for i in 1..=4 {
        let b = u32::from(*data.get(*pos)?);
        *pos += 1;
        sum = sum.wrapping_add(b << shift);
        if b < L || i == 4 {
            return Some(sum);
        }
        shift += 6;
    }
    Some(sum)
}

/// The signed variant: the sign folded into bit 0.
pub fn read_signed5(data: &[u8], pos: &mut usize) -> Option<i32> {
    let v = read_unsigned5(data, pos)?;
    Some(((v >> 1) as i32) ^ -((v & 1) as i32))
}

/// The (method, bci) scopes at `pc` of nmethod `b`, innermost (the running, possibly inlined,
/// method) first. Empty when the nmethod has no scope there; then its own method is all there is.
pub fn scopes_at(mem: &Mem, o: &Offsets, b: &Blob, pc: u64) -> Result<Vec<(u64, i32)>, Unreadable> {
    let pcs_begin = b.start + mem.u32(b.start + o.nmethod_scopes_pcs_offset)? as u64;
    let pcs_end = b.start + mem.u32(b.start + o.nmethod_dependencies_offset)? as u64;
    let n = pcs_end.saturating_sub(pcs_begin);
    if n == 0 || n > MAX_PC_DESC_BYTES || o.pc_desc_size == 0 {
        return Ok(Vec::new());
    }
    let table = mem.bytes(pcs_begin, n as usize)?;
    let target = pc.saturating_sub(b.code_begin);
    // The descriptor of the first recorded pc at or after `pc`: at a call, the return address
    // itself; elsewhere (a sampled leaf) the next safepoint or call, which has the same scopes
    // within straight-line code.
    let mut best: Option<(u64, u32)> = None;
    for d in table.chunks_exact(o.pc_desc_size as usize) {
        let field = |off: u64| {
            let off = off as usize;
            d.get(off..off + 4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (Some(pc_off), Some(scope)) = (
            field(o.pc_desc_pc_offset),
            field(o.pc_desc_scope_decode_offset),
        ) else {
            continue;
        };
        let Ok(pc_off) = u64::try_from(pc_off) else {
            continue;
        };
        if pc_off >= target && best.is_none_or(|(p, _)| pc_off < p) {
            best = Some((pc_off, scope.max(0) as u32));
        }
    }
    let Some((_, mut decode)) = best else {
        return Ok(Vec::new());
    };
    let scopes_data = mem.u64(b.start + o.compiled_scopes_data_begin)?;
    let metadata = b.start + mem.u32(b.start + o.nmethod_metadata_offset)? as u64;
    let mut out = Vec::new();
    // 0 is HotSpot's serialized null: the end of the chain.
    while decode != 0 && out.len() < MAX_SCOPES {
        let bytes = mem.bytes(scopes_data + u64::from(decode), 15)?;
        let mut pos = 0;
        let (Some(sender), Some(index), Some(bci)) = (
            read_unsigned5(&bytes, &mut pos),
            read_unsigned5(&bytes, &mut pos),
            read_unsigned5(&bytes, &mut pos),
        ) else {
            return Err(Unreadable);
        };
        let method = if index == 0 {
            0
        } else {
            mem.u64(metadata + (u64::from(index) - 1) * 8)?
        };
        // Bcis are stored plus one (InvocationEntryBci, -1, is 0).
        out.push((method, bci as i32 - 1));
        if sender >= decode {
            // Senders are written before the scopes that name them: a pointer forward is garbage.
            break;
        }
        decode = sender;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned5_round_trips_hotspot_encodings() {
        // One byte below 192; 192 + 64*k as two bytes (what HotSpot's writer emits for 192..).
        let mut pos = 0;
        assert_eq!(read_unsigned5(&[5], &mut pos), Some(5));
        // 200 = 192 + (8 % 64) → b0 = 192 + 8 = 200? writer: sum=200-192=8, b0=192+8=200, sum>>=6 → 0 → b1=0.
        let mut pos = 0;
        assert_eq!(read_unsigned5(&[200, 0], &mut pos), Some(200));
        assert_eq!(pos, 2);
        // 1000: sum=808, b0=192+(808%64)=192+40=232, sum=12 → b1=12.
        let mut pos = 0;
        assert_eq!(read_unsigned5(&[232, 12], &mut pos), Some(1000));
        // A cut stream is an error, not a number.
        let mut pos = 0;
        assert_eq!(read_unsigned5(&[232], &mut pos), None);
        // Signed: 1 → 2, -1 → 1.
        let mut pos = 0;
        assert_eq!(read_signed5(&[2, 1], &mut pos), Some(1));
        assert_eq!(read_signed5(&[2, 1], &mut pos), Some(-1));
    }
}

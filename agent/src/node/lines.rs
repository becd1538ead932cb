//! Where a JavaScript frame is in its source: the line, and the functions optimized code inlined
//! at that point (facts from V8's frames.cc, code.h, deoptimization-data.h, bytecode-array.h).
//!
//! - **Interpreted frames** (their pc is in V8's builtins: the interpreter) keep the
//!   BytecodeArray and the current bytecode offset in the frame (`v8dbg_off_fp_bytecode_array`,
//!   `v8dbg_off_fp_bytecode_offset`, a Smi counted from the tagged BytecodeArray pointer, so the
//!   header size minus the tag comes off). Both are in the stack copy: no read for them. The
//!   BytecodeArray's source position table maps the offset to a script offset. V8 builds that
//!   table lazily: a function nobody asked positions of has none yet (line 0).
//! - **Optimized frames** (TurboFan, Maglev: pc in JIT code) are found through the function's
//!   current Code (`JSFunction::code`), accepted only when the pc is inside its instructions
//!   (on-stack-replacement code and code the function no longer uses are not its current code:
//!   line 0). The pc's offset maps through the Code's source position table to a position word
//!   whose inlining id, when set, indexes the deoptimization data's inlining positions (the
//!   caller's position and the inlined function's index in the literal array). Following them
//!   gives the inlined chain, innermost first.
//! - **Baseline (Sparkplug) frames** would need the pc-to-bytecode-offset table: not read, line 0.
//!
//! Every read goes through a [`Budget`], so a sample costs a bounded number of reads.

use std::sync::Arc;

use super::layout::{Layout, Positions};
use super::position::{self, MAX_TABLE_BYTES};
use super::{Memory, instance_type};

/// Most reads of process memory one sample may do for positions and names.
pub const MAX_READS_PER_SAMPLE: u32 = 256;
/// Deepest inlined chain followed in one frame (V8's default inlining budget stays far below).
const MAX_INLINING_DEPTH: usize = 32;
/// Longest script source read to find its lines (characters).
pub const MAX_SOURCE_CHARS: u64 = 8 << 20;
/// Most lines taken from a script's `line_ends`.
const MAX_LINE_ENDS: u64 = 1 << 20;

/// A [`Memory`] that refuses reads beyond a count.
pub struct Budget<'a, M> {
    mem: &'a mut M,
    left: u32,
}

impl<'a, M: Memory> Budget<'a, M> {
    pub fn new(mem: &'a mut M, reads: u32) -> Self {
        Budget { mem, left: reads }
    }
    pub fn exhausted(&self) -> bool {
        self.left == 0
    }
    pub fn left(&self) -> u32 {
        self.left
    }
}

impl<M: Memory> Memory for Budget<'_, M> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.mem.read(addr, buf)
    }
}

/// Where in its code a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum At {
    /// An interpreted frame: the frame's BytecodeArray and offset slots (tagged words).
    Bytecode { array: u64, offset: u64 },
    /// A frame in JIT code at `pc`; `return_address` when the frame is not the sample's leaf
    /// (the pc is after the call).
    Code { pc: u64, return_address: bool },
}

/// Why a frame has no line (kept as a count per reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unmapped {
    /// This V8's layout for positions is not known (see `Positions::from_constants`).
    NoLayout,
    /// The frame's slots or objects are not what they should be (or could not be read).
    Unreadable,
    /// The bytecode has no source position table yet (V8 collects them lazily).
    NotCollected,
    /// The pc is not in the function's current code (OSR code, replaced code).
    OtherCode,
    /// Baseline (Sparkplug) code: its pc-to-bytecode table is not read.
    Baseline,
    /// No table entry covers the offset, or the position is not a script offset.
    NoPosition,
    /// The read budget of the sample ran out.
    Budget,
}

impl Unmapped {
    pub fn as_str(self) -> &'static str {
        match self {
            Unmapped::NoLayout => "no layout for this V8",
            Unmapped::Unreadable => "unreadable",
            Unmapped::NotCollected => "bytecode positions not collected yet",
            Unmapped::OtherCode => "pc not in the function's current code",
            Unmapped::Baseline => "baseline code",
            Unmapped::NoPosition => "no position",
            Unmapped::Budget => "read budget exhausted",
        }
    }
}

/// One function of a frame's chain: its SharedFunctionInfo (untagged) and its script offset.
pub type ChainEntry = (u64, Option<u32>);

fn typed(l: &Layout, mem: &mut impl Memory, tagged: u64, ty: u16) -> Option<u64> {
    let obj = l.heap_object(tagged)?;
    (instance_type(l, mem, obj)? == ty).then_some(obj)
}

/// The bytes of the ByteArray `tagged` (at most `cap`).
fn byte_array(
    l: &Layout,
    p: &Positions,
    mem: &mut impl Memory,
    tagged: u64,
    cap: usize,
) -> Option<Vec<u8>> {
    let obj = l.heap_object(tagged)?;
    let ty = instance_type(l, mem, obj)?;
    (ty == p.type_byte_array || Some(ty) == p.type_trusted_byte_array).then_some(())?;
    let len = usize::try_from(l.smi(mem.word(obj + p.array_length)?)?).ok()?;
    if len > cap {
        return None;
    }
    let mut bytes = vec![0u8; len];
    mem.read(obj + p.array_data, &mut bytes).then_some(bytes)
}

/// Word `i` of the FixedArray-like object at `obj` (untagged), bounds-checked by its length.
fn array_word(p: &Positions, l: &Layout, mem: &mut impl Memory, obj: u64, i: u64) -> Option<u64> {
    let len = u64::try_from(l.smi(mem.word(obj + p.array_length)?)?).ok()?;
    (i < len).then_some(())?;
    mem.word(obj + p.array_data + 8 * i)
}

/// The chain of functions (innermost first, `shared` last) and their script offsets at `at` in a
/// frame of the JSFunction `function` (untagged) whose SharedFunctionInfo is `shared`.
pub fn chain(
    l: &Layout,
    mem: &mut impl Memory,
    function: u64,
    shared: u64,
    at: At,
) -> Result<Vec<ChainEntry>, Unmapped> {
    let Ok(p) = &l.positions else {
        return Err(Unmapped::NoLayout);
    };
    match at {
        At::Bytecode { array, offset } => {
            let array = typed(l, mem, array, p.type_bytecode_array).ok_or(Unmapped::Unreadable)?;
            let offset = l.smi(offset).ok_or(Unmapped::Unreadable)?
                - (p.bytecode_array_data as i64 - l.heap_object_tag as i64);
            let table_word = mem
                .word(array + p.bytecode_array_positions)
                .ok_or(Unmapped::Unreadable)?;
            let table =
                byte_array(l, p, mem, table_word, MAX_TABLE_BYTES).ok_or(Unmapped::NotCollected)?;
            let raw = position::lookup(&table, offset).ok_or(Unmapped::NoPosition)?;
            Ok(vec![(shared, position::decode(raw).script_offset)])
        }
        At::Code { pc, return_address } => {
            let code_word = mem
                .word(function + p.jsfunction_code)
                .ok_or(Unmapped::Unreadable)?;
            let code = typed(l, mem, code_word, p.type_code).ok_or(Unmapped::Unreadable)?;
            let start = p.instruction_start(mem, code).ok_or(Unmapped::Unreadable)?;
            let mut b = [0u8; 4];
            if !mem.read(code + p.code_instruction_size, &mut b) {
                return Err(Unmapped::Unreadable);
            }
            let size = u64::from(u32::from_le_bytes(b));
            if !(start..start.saturating_add(size)).contains(&pc) {
                return Err(Unmapped::OtherCode);
            }
            if !mem.read(code + p.code_flags, &mut b) {
                return Err(Unmapped::Unreadable);
            }
            let kind = (u32::from_le_bytes(b) >> p.code_kind_shift) & p.code_kind_mask;
            if kind == p.code_kind_baseline {
                return Err(Unmapped::Baseline);
            }
            let table_word = mem
                .word(code + p.code_positions)
                .ok_or(Unmapped::Unreadable)?;
            let table =
                byte_array(l, p, mem, table_word, MAX_TABLE_BYTES).ok_or(Unmapped::Unreadable)?;
            let offset = (pc - start) as i64 - i64::from(return_address);
            let raw = position::lookup(&table, offset).ok_or(Unmapped::NoPosition)?;
            let mut pos = position::decode(raw);
            let mut out = Vec::new();
            if pos.inlining_id.is_none() {
                out.push((shared, pos.script_offset));
                return Ok(out);
            }
            let deopt_word = mem
                .word(code + p.code_deopt_data)
                .ok_or(Unmapped::Unreadable)?;
            let deopt = l
                .heap_object(deopt_word)
                .filter(|&o| {
                    instance_type(l, mem, o)
                        .is_some_and(|t| t == p.type_fixed_array || p.deopt_data_types.contains(&t))
                })
                .ok_or(Unmapped::Unreadable)?;
            let index = |off: u64| (off - p.array_data) / 8;
            let literals_word = array_word(p, l, mem, deopt, index(p.deopt_literals))
                .ok_or(Unmapped::Unreadable)?;
            let literals = l
                .heap_object(literals_word)
                .filter(|&o| {
                    let t = instance_type(l, mem, o);
                    t == Some(p.type_weak_fixed_array) || t == Some(p.type_fixed_array)
                })
                .ok_or(Unmapped::Unreadable)?;
            let inlining_word = array_word(p, l, mem, deopt, index(p.deopt_inlining_positions))
                .ok_or(Unmapped::Unreadable)?;
            // InliningPosition: the caller's position word, then the literal index (int), padded
            // to 16 bytes.
            let inlining =
                byte_array(l, p, mem, inlining_word, 16 << 12).ok_or(Unmapped::Unreadable)?;
            while let Some(id) = pos.inlining_id {
                if out.len() >= MAX_INLINING_DEPTH {
                    return Err(Unmapped::Unreadable);
                }
                let at = usize::from(id) * 16;
                let entry = inlining.get(at..at + 16).ok_or(Unmapped::Unreadable)?;
                let caller = u64::from_le_bytes(entry[..8].try_into().unwrap_or_default());
                let literal = u32::from_le_bytes(entry[8..12].try_into().unwrap_or_default());
                let word = array_word(p, l, mem, literals, u64::from(literal))
                    .ok_or(Unmapped::Unreadable)?;
                // A weak reference has bit 1 set on top of the heap-object tag.
                let word = if word & 3 == 3 { word & !2 } else { word };
                let sfi = typed(l, mem, word, l.type_shared).ok_or(Unmapped::Unreadable)?;
                out.push((sfi, pos.script_offset));
                pos = position::decode(caller);
            }
            out.push((shared, pos.script_offset));
            Ok(out)
        }
    }
}

/// The line ends of the Script `script` (untagged): its `line_ends` when V8 computed them, else
/// from its source (sequential strings only: node's own scripts are external strings and get
/// no lines).
pub fn script_line_ends(l: &Layout, mem: &mut impl Memory, script: u64) -> Option<Arc<[u32]>> {
    let p = l.positions.as_ref().ok()?;
    let ends_word = mem.word(script + p.script_line_ends)?;
    if let Some(ends) = typed(l, mem, ends_word, p.type_fixed_array) {
        let len = u64::try_from(l.smi(mem.word(ends + p.array_length)?)?).ok()?;
        if len > MAX_LINE_ENDS {
            return None;
        }
        let mut bytes = vec![0u8; 8 * len as usize];
        if !mem.read(ends + p.array_data, &mut bytes) {
            return None;
        }
        return bytes
            .chunks_exact(8)
            .map(|c| {
                l.smi(u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .and_then(|v| u32::try_from(v).ok())
            })
            .collect();
    }
    let mut source = mem.word(script + p.script_source)?;
    for _ in 0..2 {
        let obj = l.heap_object(source)?;
        let ty = instance_type(l, mem, obj)?;
        if ty >= l.first_nonstring_type {
            return None;
        }
        let rep = ty & l.string_representation_mask;
        if rep == l.thin_string_tag {
            source = mem.word(obj + l.thin_actual)?;
            continue;
        }
        if rep != l.seq_string_tag {
            return None;
        }
        let mut b = [0u8; 4];
        if !mem.read(obj + l.string_length, &mut b) {
            return None;
        }
        let len = u64::try_from(i32::from_le_bytes(b)).ok()?;
        if len > MAX_SOURCE_CHARS {
            return None;
        }
        return Some(if ty & l.string_encoding_mask == l.one_byte_string_tag {
            let mut bytes = vec![0u8; len as usize];
            if !mem.read(obj + l.seq_one_byte_chars, &mut bytes) {
                return None;
            }
            position::line_ends(bytes.iter().map(|&c| u16::from(c))).into()
        } else {
            let mut bytes = vec![0u8; 2 * len as usize];
            if !mem.read(obj + l.seq_two_byte_chars, &mut bytes) {
                return None;
            }
            position::line_ends(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]])),
            )
            .into()
        });
    }
    None
}

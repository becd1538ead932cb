//! V8's source positions: the position tables of bytecode and optimized code, the packed
//! `SourcePosition` word, and script offsets to lines. Facts from V8's
//! `src/codegen/source-position-table.cc` and `src/codegen/source-position.h` (unchanged in the
//! V8 versions of Node 18 to 22):
//!
//! - A table is a sequence of entries `(code offset delta, source position delta)`, each delta a
//!   zig-zag integer written as little-endian groups of 7 bits, the high bit of each byte saying
//!   another byte follows. Deltas are from the previous entry; the first is from the implicit
//!   entry (code offset -1, position 0). A negative encoded code delta `d` means the entry is an
//!   expression and the real delta is `-(d + 1)`; a non-negative one is a statement.
//! - The position of a code offset is that of the last entry whose code offset is at or below it.
//! - A position word: bit 0 "external" (a position in V8's own C++/Torque files, not in a
//!   script), bits 1..31 the script offset plus one (0: no position), bits 31..47 the inlining id
//!   plus one (0: not inlined).

/// Longest table decoded (bytes); a larger one is not V8's (V8's tables are a few KiB).
pub const MAX_TABLE_BYTES: usize = 1 << 20;

/// One zig-zag VLQ integer from `bytes` at `*at`; `None` when the table ends inside it or it is
/// longer than 64 bits.
fn read_int(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        let b = *bytes.get(*at)?;
        *at += 1;
        if shift >= 64 {
            return None;
        }
        value |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

/// The position word of code offset `offset` in `table`: the last entry at or below it. `None`
/// when no entry is (or the table is malformed before one is found).
pub fn lookup(table: &[u8], offset: i64) -> Option<u64> {
    let (mut code, mut position) = (-1i64, 0i64);
    let mut found = None;
    let mut at = 0;
    while at < table.len() {
        let d = read_int(table, &mut at)?;
        let delta = if d >= 0 { d } else { -(d + 1) };
        code = code.checked_add(delta)?;
        position = position.checked_add(read_int(table, &mut at)?)?;
        if code > offset {
            break;
        }
        found = u64::try_from(position).ok();
    }
    found
}

/// What a position word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Offset in the script's source, `None` for an external or unknown position.
    pub script_offset: Option<u32>,
    /// Index into the code's inlining positions, `None` when not inlined.
    pub inlining_id: Option<u16>,
}

pub fn decode(raw: u64) -> Position {
    let external = raw & 1 == 1;
    let offset_plus_one = ((raw >> 1) & ((1 << 30) - 1)) as u32;
    let inlining_plus_one = ((raw >> 31) & 0xffff) as u16;
    Position {
        script_offset: (!external && offset_plus_one > 0).then(|| offset_plus_one - 1),
        inlining_id: inlining_plus_one.checked_sub(1),
    }
}

/// Where each line ends in `source` (offsets of the terminators, as V8's `Script::line_ends`:
/// `\n`, `\r` not followed by `\n`, and the end of the text).
pub fn line_ends(source: impl Iterator<Item = u16>) -> Vec<u32> {
    let mut ends = Vec::new();
    let mut prev_cr = false;
    let mut len = 0u32;
    for (i, c) in source.enumerate() {
        let i = i as u32;
        if prev_cr && c != u16::from(b'\n') {
            ends.push(i - 1);
        }
        if c == u16::from(b'\n') {
            ends.push(i);
        }
        prev_cr = c == u16::from(b'\r');
        len = i + 1;
    }
    if prev_cr {
        ends.push(len - 1);
    }
    if ends.last() != Some(&len) {
        ends.push(len);
    }
    ends
}

/// The 1-based line of script offset `offset` (0 when past the end).
pub fn line_of(ends: &[u32], offset: u32) -> u32 {
    let i = ends.partition_point(|&e| e < offset);
    if i < ends.len() { i as u32 + 1 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-built tables: each entry is written from V8's description (delta from the previous
    // entry, zig-zag, 7 bits a byte, low bits first), not from `lookup`.
    //
    // Entry 1: statement at code 0, position 10: code delta 0 - (-1) = 1 → zig-zag 2 → 0x02;
    //          position delta 10 → 20 → 0x14.
    // Entry 2: expression at code 5, position 300: delta 5, expression → -(5) - 1 = -6 → zig-zag
    //          11 → 0x0b; position delta 290 → 580 = 0b100_1000100 → 0xc4 0x04.
    // Entry 3: statement at code 200, position 250: delta 195 → 390 = 0b11_0000110 → 0x86 0x03;
    //          position delta -50 → zig-zag 99 → 0x63.
    const TABLE: &[u8] = &[0x02, 0x14, 0x0b, 0xc4, 0x04, 0x86, 0x03, 0x63];

    #[test]
    fn a_table_maps_code_offsets_to_positions() {
        assert_eq!(lookup(TABLE, -2), None);
        assert_eq!(lookup(TABLE, 0), Some(10));
        assert_eq!(lookup(TABLE, 4), Some(10));
        assert_eq!(lookup(TABLE, 5), Some(300));
        assert_eq!(lookup(TABLE, 199), Some(300));
        assert_eq!(lookup(TABLE, 200), Some(250));
        assert_eq!(lookup(TABLE, 100_000), Some(250));
        assert_eq!(lookup(&[], 3), None);
        // Cut inside a multi-byte integer: malformed.
        assert_eq!(lookup(&TABLE[..4], 7), None);
    }

    #[test]
    fn a_function_entry_position_at_code_offset_minus_one() {
        // Bytecode tables may start with the function-entry entry at code offset -1 (delta 0,
        // an expression: -0 - 1 = -1 → zig-zag 1), position 7 → 14.
        let t = [0x01, 0x0e, 0x02, 0x02];
        assert_eq!(lookup(&t, -1), Some(7));
        assert_eq!(lookup(&t, 0), Some(8));
    }

    #[test]
    fn position_words_decode() {
        // Script offset 227, not inlined: (227 + 1) << 1.
        assert_eq!(
            decode(228 << 1),
            Position {
                script_offset: Some(227),
                inlining_id: None
            }
        );
        // Script offset 162 in inlined function #0: ((0 + 1) << 31) | ((162 + 1) << 1).
        assert_eq!(
            decode((1 << 31) | (163 << 1)),
            Position {
                script_offset: Some(162),
                inlining_id: Some(0)
            }
        );
        // External (a C++ line) and unknown positions have no script offset.
        assert_eq!(decode((5 << 1) | 1).script_offset, None);
        assert_eq!(decode(0).script_offset, None);
    }

    #[test]
    fn lines_from_offsets() {
        let ends = line_ends("ab\ncd\r\nef\rg".encode_utf16());
        assert_eq!(ends, vec![2, 6, 9, 11]);
        assert_eq!(line_of(&ends, 0), 1);
        assert_eq!(line_of(&ends, 2), 1);
        assert_eq!(line_of(&ends, 3), 2);
        assert_eq!(line_of(&ends, 7), 3);
        assert_eq!(line_of(&ends, 10), 4);
        assert_eq!(line_of(&ends, 12), 0);
        assert_eq!(line_ends("x\n".encode_utf16()), vec![1, 2]);
    }
}

//! Line numbers from a code object's line table, for the three formats CPython 3.8–3.13 use
//! (described in CPython's `Objects/lnotab_notes.txt` (3.8–3.10) and `Objects/locations.md`
//! (3.11+)). The tables come from the profiled process's memory, so every read is bounds-checked
//! and a malformed table gives `None`, never a panic.

use super::layouts::LineTableFormat;

/// The line of the instruction at `byte_offset` into the bytecode, starting from `firstlineno`.
/// `None` when the table says the instruction has no line, or is malformed.
pub fn line_for(
    format: LineTableFormat,
    table: &[u8],
    firstlineno: i32,
    byte_offset: u64,
) -> Option<i32> {
    match format {
        LineTableFormat::Lnotab => lnotab(table, firstlineno, byte_offset),
        LineTableFormat::Linetable310 => linetable_310(table, firstlineno, byte_offset),
        LineTableFormat::Locations => locations(table, firstlineno, byte_offset / 2),
    }
}

/// 3.8–3.9: pairs of (unsigned byte increment, signed line increment).
fn lnotab(table: &[u8], firstlineno: i32, target: u64) -> Option<i32> {
    let mut addr = 0u64;
    let mut line = firstlineno;
    for pair in table.chunks_exact(2) {
        addr += u64::from(pair[0]);
        if addr > target {
            break;
        }
        line = line.checked_add(i32::from(pair[1] as i8))?;
    }
    Some(line)
}

/// 3.10: pairs of (unsigned byte delta, signed line delta); a line delta of -128 means the range
/// has no line.
fn linetable_310(table: &[u8], firstlineno: i32, target: u64) -> Option<i32> {
    let mut start = 0u64;
    let mut line = firstlineno;
    for pair in table.chunks_exact(2) {
        let end = start + u64::from(pair[0]);
        let delta = pair[1] as i8;
        let here = if delta == -128 {
            None
        } else {
            line = line.checked_add(i32::from(delta))?;
            Some(line)
        };
        if (start..end).contains(&target) {
            return here;
        }
        start = end;
    }
    None
}

/// 3.11+: entries of a first byte `1cccclll` (code `c`, `l + 1` code units) and its payload.
fn locations(table: &[u8], firstlineno: i32, target_unit: u64) -> Option<i32> {
    let mut r = Reader { table, pos: 0 };
    let mut unit = 0u64;
    let mut line = firstlineno;
    while let Some(first) = r.byte() {
        if first & 0x80 == 0 {
            return None;
        }
        let code = (first >> 3) & 15;
        let len = u64::from(first & 7) + 1;
        let delta = match code {
            15 => None,
            14 => {
                let d = r.svarint()?;
                // end line delta, start column + 1, end column + 1
                for _ in 0..3 {
                    r.varint()?;
                }
                Some(d)
            }
            13 => Some(r.svarint()?),
            10..=12 => {
                r.byte()?;
                r.byte()?;
                Some(i32::from(code) - 10)
            }
            _ => {
                r.byte()?;
                Some(0)
            }
        };
        let here = match delta {
            Some(d) => {
                line = line.checked_add(d)?;
                Some(line)
            }
            None => None,
        };
        if (unit..unit + len).contains(&target_unit) {
            return here;
        }
        unit += len;
    }
    None
}

struct Reader<'a> {
    table: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.table.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// 6 bits per byte, least significant first; bit 6 says another byte follows.
    fn varint(&mut self) -> Option<u32> {
        let mut b = self.byte()?;
        let mut v = u32::from(b & 63);
        let mut shift = 6;
        while b & 64 != 0 {
            b = self.byte()?;
            if shift > 30 {
                return None;
            }
            v |= u32::from(b & 63) << shift;
            shift += 6;
        }
        Some(v)
    }

    /// A varint whose low bit is the sign.
    fn svarint(&mut self) -> Option<i32> {
        let v = self.varint()?;
        let m = i32::try_from(v >> 1).ok()?;
        Some(if v & 1 != 0 { -m } else { m })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_and_310_tables() {
        // Lines 10 (bytes 0..6), 11 (6..10), 13 (10..).
        let t = [6u8, 1, 4, 2];
        assert_eq!(lnotab(&t, 10, 0), Some(10));
        assert_eq!(lnotab(&t, 10, 6), Some(11));
        assert_eq!(lnotab(&t, 10, 9), Some(11));
        assert_eq!(lnotab(&t, 10, 40), Some(13));
        // 3.10: bytes 0..4 line 11, 4..8 no line, 8..12 line 10.
        let t = [4u8, 1, 4, 0x80, 4, (-1i8) as u8];
        assert_eq!(linetable_310(&t, 10, 2), Some(11));
        assert_eq!(linetable_310(&t, 10, 5), None);
        assert_eq!(linetable_310(&t, 10, 9), Some(10));
        assert_eq!(linetable_310(&t, 10, 12), None);
    }

    #[test]
    fn location_table_forms() {
        let t = [
            // short form, 2 units, same line: code 0, len 2
            0x80 | 1,
            0x05,
            // one-line form +1, 1 unit: code 11
            0x80 | (11 << 3),
            3,
            9,
            // no-column form, 1 unit, delta -2 (svarint 5)
            0x80 | (13 << 3),
            5,
            // long form, 1 unit, delta +70 (svarint 140 = 0b10001100: 12 | 64, then 2)
            0x80 | (14 << 3),
            12 | 64,
            2,
            0,
            1,
            1,
            // no location, 1 unit
            0x80 | (15 << 3),
        ];
        assert_eq!(locations(&t, 5, 0), Some(5));
        assert_eq!(locations(&t, 5, 1), Some(5));
        assert_eq!(locations(&t, 5, 2), Some(6));
        assert_eq!(locations(&t, 5, 3), Some(4));
        assert_eq!(locations(&t, 5, 4), Some(74));
        assert_eq!(locations(&t, 5, 5), None);
        assert_eq!(locations(&t, 5, 6), None);
        // Truncated or malformed: no answer, no panic.
        assert_eq!(locations(&t[..8], 5, 4), None);
        assert_eq!(locations(&[0x05], 5, 0), None);
        assert_eq!(line_for(LineTableFormat::Locations, &t, 5, 4), Some(6));
    }
}

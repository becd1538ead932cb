//! The few parts of a `node` binary the detection needs, read with little memory: the section and
//! program headers, the symbols (streamed), and a 4-byte value here and there.
//!
//! Why not `object::File::parse` over a `ReadCache`: Debian's `node` has 107,000 symbols (a 2.6 MB
//! `.symtab`) and a 7.5 MB `.strtab`; `object` reads the symbol table whole, and the cache keeps
//! every symbol name it was asked for as a separate allocation in a hash map. Scanning the names
//! that way held ~25 MB at once, which put the agent's start-up peak (63 MiB) at the edge of its
//! 64 MiB target. Here the string table is one buffer, freed when the scan ends, and the symbols
//! are read a few thousand at a time.

use std::fs::File;
use std::os::unix::fs::FileExt;

use object::Endianness;
use object::elf::{FileHeader64, ProgramHeader64, SectionHeader64, Sym64};
use object::read::ReadCache;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};

/// Largest string table read (bytes); a larger one is not a `node` binary's.
const MAX_STRTAB_BYTES: u64 = 64 << 20;
/// Symbols read at a time (24 bytes each).
const SYMBOLS_PER_READ: usize = 4096;

/// A 64-bit ELF file's headers.
pub struct Elf<'f> {
    file: &'f File,
    endian: Endianness,
    sections: Vec<SectionHeader64<Endianness>>,
    segments: Vec<ProgramHeader64<Endianness>>,
}

/// One symbol as [`Elf::for_each_symbol`] gives it.
pub struct Symbol<'s> {
    pub name: &'s [u8],
    pub address: u64,
    pub size: u64,
    /// Index of the section it is defined in; `None` for undefined and special (absolute,
    /// common) symbols.
    pub section: Option<usize>,
}

impl<'f> Elf<'f> {
    /// Reads the ELF header, the section headers and the program headers of `file`.
    pub fn parse(file: &'f File) -> Result<Elf<'f>, String> {
        let cache = ReadCache::new(file);
        let header = FileHeader64::<Endianness>::parse(&cache)
            .map_err(|e| format!("not a 64-bit ELF file: {e}"))?;
        let endian = header
            .endian()
            .map_err(|e| format!("bad ELF header: {e}"))?;
        let sections = header
            .section_headers(endian, &cache)
            .map_err(|e| format!("bad ELF section headers: {e}"))?
            .to_vec();
        let segments = header
            .program_headers(endian, &cache)
            .map_err(|e| format!("bad ELF program headers: {e}"))?
            .to_vec();
        Ok(Elf {
            file,
            endian,
            sections,
            segments,
        })
    }

    /// Calls `f` with every symbol of `.symtab`, then of `.dynsym`.
    pub fn for_each_symbol(&self, mut f: impl FnMut(Symbol<'_>)) -> Result<(), String> {
        let e = self.endian;
        for kind in [object::elf::SHT_SYMTAB, object::elf::SHT_DYNSYM] {
            let Some(table) = self.sections.iter().find(|s| s.sh_type(e) == kind) else {
                continue;
            };
            let strtab = self
                .sections
                .get(table.sh_link(e) as usize)
                .ok_or("a symbol table without its string table")?;
            let (offset, size) = (strtab.sh_offset(e), strtab.sh_size(e));
            if size > MAX_STRTAB_BYTES {
                return Err(format!("string table of {size} bytes: too large"));
            }
            let mut strings = vec![0u8; size as usize];
            self.file
                .read_exact_at(&mut strings, offset)
                .map_err(|err| format!("cannot read the string table: {err}"))?;
            let entry = std::mem::size_of::<Sym64<Endianness>>() as u64;
            let count = table.sh_size(e) / entry;
            let mut buf = vec![0u8; SYMBOLS_PER_READ * entry as usize];
            let mut at = 0u64;
            while at < count {
                let n = (count - at).min(SYMBOLS_PER_READ as u64);
                let bytes = &mut buf[..(n * entry) as usize];
                self.file
                    .read_exact_at(bytes, table.sh_offset(e) + at * entry)
                    .map_err(|err| format!("cannot read the symbol table: {err}"))?;
                let (symbols, _) =
                    object::pod::slice_from_bytes::<Sym64<Endianness>>(bytes, n as usize)
                        .map_err(|()| "symbol table cut short".to_owned())?;
                for s in symbols {
                    let name = strings
                        .get(s.st_name(e) as usize..)
                        .and_then(|rest| rest.split(|&b| b == 0).next())
                        .unwrap_or_default();
                    let shndx = s.st_shndx(e);
                    f(Symbol {
                        name,
                        address: s.st_value(e),
                        size: s.st_size(e),
                        section: (shndx != object::elf::SHN_UNDEF
                            && shndx < object::elf::SHN_LORESERVE)
                            .then_some(usize::from(shndx)),
                    });
                }
                at += n;
            }
        }
        Ok(())
    }

    /// The `int` at `address` in section `section` (0 in a section without file data, `.bss`).
    pub fn int_at(&self, section: usize, address: u64) -> Option<i32> {
        let e = self.endian;
        let s = self.sections.get(section)?;
        if s.sh_type(e) == object::elf::SHT_NOBITS {
            return Some(0);
        }
        let within = address.checked_sub(s.sh_addr(e))?;
        if within.checked_add(4)? > s.sh_size(e) {
            return None;
        }
        let mut b = [0u8; 4];
        self.file
            .read_exact_at(&mut b, s.sh_offset(e).checked_add(within)?)
            .ok()?;
        Some(i32::from_le_bytes(b))
    }

    /// The load bias of a mapping of this file at `start` from file offset `offset`: what to add
    /// to the file's addresses to get the process's (one bias for the whole file, as ELF loads it).
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let e = self.endian;
        self.segments
            .iter()
            .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
            .find_map(|p| {
                let (off, size) = (p.p_offset(e), p.p_filesz(e));
                (off..off + size).contains(&offset).then(|| {
                    start
                        .wrapping_sub(offset)
                        .wrapping_add(off)
                        .wrapping_sub(p.p_vaddr(e))
                })
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection, ObjectSymbol};

    /// The scan sees what `object` sees: the same symbols, addresses, sizes and sections, and the
    /// same values at them, on this (unstripped) test binary.
    #[test]
    fn symbols_and_values_agree_with_object() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let mut want: Vec<(Vec<u8>, u64, u64, Option<usize>)> = obj
            .symbols()
            .chain(obj.dynamic_symbols())
            .map(|s| {
                (
                    s.name_bytes().unwrap().to_vec(),
                    s.address(),
                    s.size(),
                    s.section_index().map(|i| i.0),
                )
            })
            .collect();
        let file = File::open("/proc/self/exe").unwrap();
        let elf = Elf::parse(&file).unwrap();
        let mut got = Vec::new();
        elf.for_each_symbol(|s| got.push((s.name.to_vec(), s.address, s.size, s.section)))
            .unwrap();
        // object leaves out the null symbol at index 0 of each table.
        got.retain(|(n, a, ..)| !(n.is_empty() && *a == 0));
        want.retain(|(n, a, ..)| !(n.is_empty() && *a == 0));
        assert!(want.len() > 1000, "an unstripped test binary");
        assert_eq!(got, want);

        // A 4-byte value of a data object (in `.data`, as node's constants are), as object reads it.
        let sym = obj
            .symbols()
            .find(|s| {
                s.kind() == object::SymbolKind::Data
                    && s.size() >= 4
                    && s.section_index().is_some_and(|i| {
                        obj.section_by_index(i)
                            .is_ok_and(|sec| sec.kind() == object::SectionKind::Data)
                    })
            })
            .unwrap();
        let section = obj.section_by_index(sym.section_index().unwrap()).unwrap();
        let bytes = section.data_range(sym.address(), 4).unwrap().unwrap();
        assert_eq!(
            elf.int_at(sym.section_index().unwrap().0, sym.address()),
            Some(i32::from_le_bytes(bytes.try_into().unwrap()))
        );
    }
}

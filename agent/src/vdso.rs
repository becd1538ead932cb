//! The kernel's vDSO: names and unwind tables for `[vdso]` frames.
//!
//! The vDSO has no file behind it, so neither the server (which symbolizes by uploaded file) nor
//! the unwinder (which reads tables from files) could see into it: a sample in `clock_gettime`
//! would end as an unnamed frame with no caller. But every 64-bit process of one kernel maps the
//! same image, and the agent maps it too: it reads its own copy once (through `/proc/self/mem`,
//! no unsafe code), names `[vdso]` frames from the image's dynamic symbols and unwinds through
//! them with the image's `.eh_frame`.
//!
//! A process whose `[vdso]` mapping is not the size of the agent's (a 32-bit process, whose vDSO
//! is another image) is left alone: its frames keep the "not backed by a file" reason.

use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, OnceLock};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::procmaps::{Mapping, MappingKind};
use crate::unwind::tables::ObjectTables;

/// One function of the vDSO, by file offset.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Symbol {
    start: u64,
    end: u64,
    name: Box<str>,
}

/// The agent's own vDSO image, parsed.
#[derive(Debug)]
pub struct Vdso {
    size: u64,
    /// Sorted by `start`; file offsets (the vDSO mapping's offset 0 is the image's first byte).
    symbols: Vec<Symbol>,
    tables: Option<Arc<ObjectTables>>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VdsoError {
    #[error("no [vdso] mapping in /proc/self/maps")]
    NotMapped,
    #[error("cannot read the vDSO: {0}")]
    Read(#[from] std::io::Error),
    #[error("cannot parse the vDSO image: {0}")]
    Parse(#[from] object::read::Error),
}

impl Vdso {
    /// The running kernel's vDSO, read on first use; `None` (logged once) when it cannot be read.
    pub fn get() -> Option<&'static Vdso> {
        static VDSO: OnceLock<Option<Vdso>> = OnceLock::new();
        VDSO.get_or_init(|| match Vdso::load() {
            Ok(v) => {
                tracing::debug!(symbols = v.symbols.len(), size = v.size, "read the vDSO");
                Some(v)
            }
            Err(e) => {
                tracing::warn!(error = %e, "[vdso] frames will not be named or unwound through");
                None
            }
        })
        .as_ref()
    }

    /// Reads the agent's own `[vdso]` mapping.
    pub fn load() -> Result<Vdso, VdsoError> {
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let m = crate::procmaps::parse_maps(&maps)
            .mappings
            .into_iter()
            .find(|m| m.kind == MappingKind::Vdso)
            .ok_or(VdsoError::NotMapped)?;
        let size = m.end - m.start;
        let mut image = vec![0u8; usize::try_from(size).unwrap_or(0)];
        let mut mem = std::fs::File::open("/proc/self/mem")?;
        mem.seek(SeekFrom::Start(m.start))?;
        mem.read_exact(&mut image)?;
        Self::parse(&image)
    }

    /// Parses a vDSO image (as mapped: the image starts at file offset 0).
    pub fn parse(image: &[u8]) -> Result<Vdso, VdsoError> {
        let obj = object::File::parse(image)?;
        // Symbol values are addresses in the image's stated address space; frames come as file
        // offsets. Translate through the load segment (for the vDSO the two are usually equal).
        let segments: Vec<(u64, u64, u64)> = obj
            .segments()
            .map(|s| (s.address(), s.size(), s.file_range().0))
            .collect();
        let to_offset = |addr: u64| {
            segments
                .iter()
                .find(|&&(va, size, _)| (va..va + size).contains(&addr))
                .map(|&(va, _, off)| addr - va + off)
        };
        let mut symbols: Vec<Symbol> = obj
            .dynamic_symbols()
            .chain(obj.symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                let start = to_offset(s.address())?;
                Some(Symbol {
                    start,
                    end: start + s.size(),
                    name: name.into(),
                })
            })
            .collect();
        // Aliases (`clock_gettime` and `__vdso_clock_gettime`) share an address: keep the
        // `__vdso_` name, which is what the function is called in the kernel source and in perf.
        symbols.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then_with(|| {
                    b.name
                        .starts_with("__vdso_")
                        .cmp(&a.name.starts_with("__vdso_"))
                })
                .then_with(|| a.name.cmp(&b.name))
        });
        symbols.dedup_by_key(|s| s.start);
        let tables = ObjectTables::from_object(&obj, "[vdso]".to_owned()).map(Arc::new);
        Ok(Vdso {
            size: image.len() as u64,
            symbols,
            tables,
        })
    }

    /// True when `m` is a `[vdso]` mapping of this image (same kind and size).
    pub fn matches(&self, m: &Mapping) -> bool {
        m.kind == MappingKind::Vdso && m.end - m.start == self.size
    }

    /// The function containing `addr` of mapping `m` (a matching `[vdso]` mapping).
    pub fn lookup(&self, m: &Mapping, addr: u64) -> Option<&str> {
        if !self.matches(m) || !m.contains(addr) {
            return None;
        }
        let offset = m.file_offset(addr);
        let i = self.symbols.partition_point(|s| s.start <= offset);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        (offset < s.end).then_some(&*s.name)
    }

    /// The vDSO's unwind tables, if the image has any.
    pub fn tables(&self) -> Option<&Arc<ObjectTables>> {
        self.tables.as_ref()
    }

    pub fn symbol_count(&self) -> usize {
        self.symbols.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::buildid::FileId;

    fn vdso_mapping(start: u64, size: u64) -> Mapping {
        Mapping {
            start,
            end: start + size,
            offset: 0,
            file: FileId {
                major: 0,
                minor: 0,
                inode: 0,
            },
            kind: MappingKind::Vdso,
            build_id: None,
        }
    }

    #[test]
    fn names_clock_gettime_in_this_kernels_vdso() {
        let v = Vdso::load().unwrap();
        assert!(v.symbol_count() > 0);
        assert!(v.tables().is_some(), "the x86-64 vDSO has .eh_frame");
        // Where the agent's own clock_gettime lives, as libc resolved it.
        let maps =
            crate::procmaps::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let own = maps
            .mappings
            .iter()
            .find(|m| m.kind == MappingKind::Vdso)
            .unwrap()
            .clone();
        let names: Vec<&str> = (own.start..own.end)
            .step_by(4)
            .filter_map(|a| v.lookup(&own, a))
            .collect();
        assert!(
            names.contains(&"__vdso_clock_gettime"),
            "vDSO functions: {names:?}"
        );
        // Another process's mapping at another address: same names at the same offsets.
        let other = vdso_mapping(0x7fff_0000_0000, own.end - own.start);
        for off in (0..own.end - own.start).step_by(16) {
            assert_eq!(
                v.lookup(&own, own.start + off),
                v.lookup(&other, other.start + off)
            );
        }
    }

    #[test]
    fn a_vdso_of_another_size_is_not_named() {
        let v = Vdso::load().unwrap();
        let odd = vdso_mapping(0x7fff_0000_0000, 0x1000);
        assert!(!v.matches(&odd) || v.size == 0x1000);
        let file = Mapping {
            kind: MappingKind::File {
                path: "/bin/true".into(),
                deleted: false,
            },
            ..vdso_mapping(0x1000, v.size)
        };
        assert!(!v.matches(&file));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Vdso::parse(b"not an elf").is_err());
        assert!(Vdso::parse(&[]).is_err());
    }
}

//! Kernel symbols from `/proc/kallsyms`: the text symbols, sorted, and address → name lookups for
//! kernel stack frames.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KallsymsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// A kernel frame is attributed to the preceding symbol only if it is at most this far past it;
/// further away (past the last symbol of a region) it is more likely to be in something unlisted.
const MAX_SYMBOL_SIZE: u64 = 1 << 20;

/// 16 bytes per symbol; the names live in one string ([`Kallsyms::names`]). With ~120 k text
/// symbols that is ~5 MiB in all, where a `Box<str>` per name took ~8 MiB (pointer, length and a
/// malloc chunk each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Symbol {
    addr: u64,
    /// `names[name..name + len]` is `name`, or `name [module]` for module symbols: what the frame
    /// is called in profiles.
    name: u32,
    len: u32,
}

/// A resolved kernel address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSymbol<'a> {
    /// `name` or `name [module]`.
    pub name: &'a str,
    pub addr: u64,
    pub offset: u64,
}

/// The kernel's text symbols, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    symbols: Vec<Symbol>,
    names: String,
    restricted: bool,
}

impl Kallsyms {
    /// Loads `/proc/kallsyms`. Warns (once per load) when every address reads as zero, which is
    /// what `kptr_restrict` shows to unprivileged readers: kernel frames then stay unsymbolized.
    pub fn load() -> Result<Self, KallsymsError> {
        Self::load_from(Path::new("/proc/kallsyms"))
    }

    pub fn load_from(path: &Path) -> Result<Self, KallsymsError> {
        let err = |source| KallsymsError::Read {
            path: path.display().to_string(),
            source,
        };
        // Streamed: the file is ~5-10 MB of text, never held whole.
        let file = std::fs::File::open(path).map_err(err)?;
        let k =
            Self::parse_reader(std::io::BufReader::with_capacity(64 << 10, file)).map_err(err)?;
        if k.restricted {
            tracing::warn!(
                path = %path.display(),
                "kernel symbol addresses are all zero (kptr_restrict or missing CAP_SYSLOG): \
                 kernel frames will not be named"
            );
        } else if k.symbols.is_empty() {
            tracing::warn!(path = %path.display(), "no kernel text symbols found");
        } else {
            tracing::debug!(symbols = k.symbols.len(), "loaded kernel symbols");
        }
        Ok(k)
    }

    /// Parses kallsyms text: `address type name [module]` per line; keeps text symbols (`t`, `T`,
    /// and weak `w`/`W`).
    pub fn parse(text: &str) -> Self {
        // Reading from a byte slice cannot fail.
        Self::parse_reader(text.as_bytes()).unwrap_or_default()
    }

    /// [`Kallsyms::parse`] over a reader, line by line.
    pub fn parse_reader(mut reader: impl std::io::BufRead) -> std::io::Result<Self> {
        let mut symbols = Vec::new();
        let mut names = String::new();
        let mut saw_any = false;
        let mut saw_nonzero = false;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            saw_any = true;
            saw_nonzero |= addr != 0;
            if !matches!(ty, "t" | "T" | "w" | "W") || addr == 0 {
                continue;
            }
            let (Ok(start), true) = (
                u32::try_from(names.len()),
                names.len() < u32::MAX as usize / 2,
            ) else {
                // Over 2 GiB of names: not a real kallsyms.
                break;
            };
            names.push_str(name);
            if let Some(module) = fields.next().filter(|m| m.starts_with('[')) {
                names.push(' ');
                names.push_str(module);
            }
            let len = u32::try_from(names.len()).unwrap_or(u32::MAX) - start;
            symbols.push(Symbol {
                addr,
                name: start,
                len,
            });
        }
        symbols.sort_by_key(|s| s.addr);
        // Aliases at the same address: keep the first name seen after a stable sort.
        symbols.dedup_by_key(|s| s.addr);
        symbols.shrink_to_fit();
        names.shrink_to_fit();
        Ok(Kallsyms {
            symbols,
            names,
            restricted: saw_any && !saw_nonzero,
        })
    }

    /// The symbol containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<KernelSymbol<'_>> {
        let i = self.symbols.partition_point(|s| s.addr <= addr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        let offset = addr - s.addr;
        let name = self
            .names
            .get(s.name as usize..s.name as usize + s.len as usize)
            .unwrap_or("");
        (offset < MAX_SYMBOL_SIZE).then_some(KernelSymbol {
            name,
            addr: s.addr,
            offset,
        })
    }

    /// True when the addresses were hidden (all zero).
    pub fn is_restricted(&self) -> bool {
        self.restricted
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t do_one_initcall
ffffffff81002000 D some_data
ffffffff81003000 W weak_fn
ffffffff81004000 T vfs_read
ffffffffc0a00000 t nft_do_chain\t[nf_tables]
ffffffffc0a00800 T nft_register_expr\t[nf_tables]
0000000000000000 A fixed_percpu_data
";

    #[test]
    fn parses_and_looks_up() {
        let k = Kallsyms::parse(FIXTURE);
        assert!(!k.is_restricted());
        assert_eq!(
            k.len(),
            6,
            "data and absolute symbols are skipped, aliases merged"
        );
        let s = k.lookup(0xffffffff81004010).unwrap();
        assert_eq!((s.name, s.offset), ("vfs_read", 0x10));
        assert_eq!(k.lookup(0xffffffff81000005).unwrap().name, "_stext");
        assert_eq!(
            k.lookup(0xffffffff81002100).unwrap().name,
            "do_one_initcall"
        );
        assert_eq!(k.lookup(0xffffffff81003001).unwrap().name, "weak_fn");
        assert_eq!(
            k.lookup(0xffffffffc0a00010).unwrap().name,
            "nft_do_chain [nf_tables]"
        );
        assert_eq!(k.lookup(0xffffffff80000000), None, "below every symbol");
        assert_eq!(
            k.lookup(0xffffffffc0a00800 + (2 << 20)),
            None,
            "far past the last"
        );
    }

    #[test]
    fn zeroed_addresses_are_detected() {
        let k = Kallsyms::parse(
            "0000000000000000 T _stext\n0000000000000000 t vfs_read\n0000000000000000 t x [m]\n",
        );
        assert!(k.is_restricted());
        assert!(k.is_empty());
        assert_eq!(k.lookup(0xffffffff81004010), None);
    }

    #[test]
    fn loads_the_real_file() {
        let k = Kallsyms::load().unwrap();
        // Either named symbols (root) or the restricted view; never both empty and unrestricted.
        assert!(k.is_restricted() || !k.is_empty());
    }
}

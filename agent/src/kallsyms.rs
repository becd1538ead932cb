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

#[derive(Clone, Debug, PartialEq, Eq)]
struct Symbol {
    addr: u64,
    /// `name`, or `name [module]` for module symbols: what the frame is called in profiles.
    display: Box<str>,
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
    restricted: bool,
}

impl Kallsyms {
    /// Loads `/proc/kallsyms`. Warns (once per load) when every address reads as zero, which is
    /// what `kptr_restrict` shows to unprivileged readers: kernel frames then stay unsymbolized.
    pub fn load() -> Result<Self, KallsymsError> {
        Self::load_from(Path::new("/proc/kallsyms"))
    }

    pub fn load_from(path: &Path) -> Result<Self, KallsymsError> {
        let text = std::fs::read_to_string(path).map_err(|source| KallsymsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let k = Self::parse(&text);
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
        let mut symbols = Vec::new();
        let mut saw_any = false;
        let mut saw_nonzero = false;
        for line in text.lines() {
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
            let display = match fields.next() {
                Some(module) if module.starts_with('[') => format!("{name} {module}"),
                _ => name.to_owned(),
            };
            symbols.push(Symbol {
                addr,
                display: display.into_boxed_str(),
            });
        }
        symbols.sort_by_key(|s| s.addr);
        // Aliases at the same address: keep the first name seen after a stable sort.
        symbols.dedup_by_key(|s| s.addr);
        Kallsyms {
            symbols,
            restricted: saw_any && !saw_nonzero,
        }
    }

    /// The symbol containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<KernelSymbol<'_>> {
        let i = self.symbols.partition_point(|s| s.addr <= addr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        let offset = addr - s.addr;
        (offset < MAX_SYMBOL_SIZE).then_some(KernelSymbol {
            name: &s.display,
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

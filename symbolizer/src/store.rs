//! The on-disk debuginfo store: ELF files by build ID, written atomically and verified on upload.
//!
//! Uploads are untrusted. Each one is streamed to a temporary file under a byte limit (enforced
//! while the caller's reader, typically a decompressor, produces bytes), refused as soon as it
//! shows a long run of zero bytes (padding that compresses to nothing), and then checked before it
//! becomes visible: an ELF whose build ID is the one it is stored under, whose sections and
//! segments cover (nearly) all of it, and — when a file is already stored — one that carries
//! strictly more (a symbol table or DWARF the stored one lacks). Anything else is refused with an
//! [`Error`] that names the problem, and nothing is left behind.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::NamedTempFile;

use crate::Error;
use crate::build_id::{BuildId, read_build_id_from};

/// Uploads in progress live here (same filesystem as the final paths, so the final rename is
/// atomic). Not a valid two-hex-digit fan-out directory name, so it can never clash with one.
const TMP_DIR: &str = "tmp";

/// Temp files older than this at `open` are leftovers of a crashed process, not live uploads.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Longest run of zero bytes an upload may contain. Linkers align segments to at most a few MiB,
/// and zero-initialized data goes to `.bss` (no file space): a longer run is padding meant to make
/// a tiny compressed upload inflate into a huge stored file.
pub const MAX_ZERO_RUN: u64 = 32 << 20;

/// Bytes of an upload that may lie outside every section and segment (the ELF and program headers
/// and the section header table, alignment gaps): far less than this in any linker's output.
pub const MAX_UNCOVERED_BYTES: u64 = 16 << 20;

/// What a stored ELF carries for naming frames; uploads may only add to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// A `.symtab` (function names for local and static functions).
    pub symtab: bool,
    /// DWARF (`.debug_info`, possibly compressed): lines and inlined frames.
    pub dwarf: bool,
}

impl Contents {
    /// Whether `self` has everything `other` has, and more.
    pub fn strictly_more_than(self, other: Contents) -> bool {
        self != other && (self.symtab || !other.symtab) && (self.dwarf || !other.dwarf)
    }

    fn describe(self) -> &'static str {
        match (self.symtab, self.dwarf) {
            (true, true) => "a symbol table and DWARF",
            (true, false) => "a symbol table",
            (false, true) => "DWARF",
            (false, false) => "no symbol table and no DWARF",
        }
    }
}

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Nothing was stored for the build ID; now `bytes` are.
    New { bytes: u64 },
    /// The stored file carried less (see [`Contents`]); it was replaced.
    Replaced { bytes: u64, old_bytes: u64 },
    /// The same bytes were already stored: nothing changed.
    Unchanged { bytes: u64 },
}

/// Which of a build ID's two files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The mapped ELF itself (`.elf`): its segments place file offsets.
    Executable,
    /// Its separate debug file (`.debug`): names and lines for a stripped executable.
    Debuginfo,
}

/// One stored file, as listed by [`DebugInfoStore::files`].
#[derive(Clone, Debug)]
pub struct StoredFile {
    pub id: BuildId,
    pub kind: FileKind,
    pub path: PathBuf,
    pub bytes: u64,
    /// Last modification: the upload, or the last [`DebugInfoStore::touch`].
    pub modified: SystemTime,
}

/// ELF files stored on disk by build ID (`<root>/<id[0..2]>/<id[2..]>.elf`).
#[derive(Debug)]
pub struct DebugInfoStore {
    root: PathBuf,
}

impl DebugInfoStore {
    /// Opens (creating if needed) a store rooted at `root`, and removes stale partial uploads.
    pub fn open(root: impl Into<PathBuf>) -> Result<DebugInfoStore, Error> {
        let root = root.into();
        fs::create_dir_all(root.join(TMP_DIR))?;
        let store = DebugInfoStore { root };
        store.remove_stale_tmp_files();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the file for `id` lives (whether or not it is stored).
    pub(crate) fn file_path(&self, id: &BuildId) -> PathBuf {
        let s = id.as_str();
        // BuildId guarantees at least 2 ASCII hex digits, so this split is on a char boundary.
        let (fan, rest) = s.split_at(2);
        self.root.join(fan).join(format!("{rest}.elf"))
    }

    /// Where the separate debug file for `id` lives (`objcopy --only-keep-debug` output, or what
    /// `/usr/lib/debug/.build-id/` or a debuginfod server holds), whether or not it is stored.
    pub(crate) fn debug_file_path(&self, id: &BuildId) -> PathBuf {
        self.file_path(id).with_extension("debug")
    }

    /// The stored separate debug file for `id`, if any.
    pub fn debug_path(&self, id: &BuildId) -> Option<PathBuf> {
        let path = self.debug_file_path(id);
        path.is_file().then_some(path)
    }

    /// Size in bytes of the stored separate debug file for `id`, if any.
    pub fn debug_size(&self, id: &BuildId) -> Option<u64> {
        fs::metadata(self.debug_file_path(id))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Like [`DebugInfoStore::insert_from_reader`], for the separate debug file of `id` (its
    /// names and lines; the executable stays the source of the address layout).
    pub fn insert_debug_from_reader(
        &self,
        id: &BuildId,
        reader: impl Read,
        max_bytes: u64,
    ) -> Result<Stored, Error> {
        self.insert_at(id, reader, max_bytes, self.debug_file_path(id))
    }

    pub fn contains(&self, id: &BuildId) -> bool {
        self.path(id).is_some()
    }

    /// The stored file for `id`, if any.
    pub fn path(&self, id: &BuildId) -> Option<PathBuf> {
        let path = self.file_path(id);
        path.is_file().then_some(path)
    }

    /// Size in bytes of the stored file for `id`, if any.
    pub fn size(&self, id: &BuildId) -> Option<u64> {
        fs::metadata(self.file_path(id))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Streams an (already decompressed) ELF into the store; atomically visible once complete.
    /// Fails (storing nothing) above `max_bytes` ([`Error::TooLarge`], as soon as the reader goes
    /// past it), on non-ELF input, on a build ID mismatch, on padding ([`Error::Padding`]).
    /// When the ID is already stored, the same bytes are [`Stored::Unchanged`]; a file carrying
    /// strictly more (see [`Contents`]) replaces the old one atomically (readers that have it open
    /// keep reading the old one), so better debuginfo for the same build can arrive later;
    /// anything else is [`Error::Conflict`].
    pub fn insert_from_reader(
        &self,
        id: &BuildId,
        reader: impl Read,
        max_bytes: u64,
    ) -> Result<Stored, Error> {
        self.insert_at(id, reader, max_bytes, self.file_path(id))
    }

    /// The path of `kind` of `id`, whether or not it is stored.
    pub fn path_of(&self, id: &BuildId, kind: FileKind) -> PathBuf {
        match kind {
            FileKind::Executable => self.file_path(id),
            FileKind::Debuginfo => self.debug_file_path(id),
        }
    }

    /// Marks both files of `id` (those stored) as used now: their modification time is what
    /// [`DebugInfoStore::files`] reports, and what retention reads as "last referenced".
    pub fn touch(&self, id: &BuildId, now: SystemTime) {
        for path in [self.file_path(id), self.debug_file_path(id)] {
            match fs::File::options().write(true).open(&path) {
                Ok(f) => {
                    if let Err(e) = f.set_modified(now) {
                        tracing::debug!(path = %path.display(), error = %e, "cannot touch debuginfo");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot touch debuginfo")
                }
            }
        }
    }

    /// Every stored file (blocking: walks the store's directories).
    pub fn files(&self) -> Vec<StoredFile> {
        let mut out = Vec::new();
        let Ok(fans) = fs::read_dir(&self.root) else {
            return out;
        };
        for fan in fans.flatten() {
            let fan_name = fan.file_name();
            let Some(fan_name) = fan_name.to_str() else {
                continue;
            };
            if fan_name == TMP_DIR || !fan.path().is_dir() {
                continue;
            }
            let Ok(entries) = fs::read_dir(fan.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let kind = match path.extension().and_then(|x| x.to_str()) {
                    Some("elf") => FileKind::Executable,
                    Some("debug") => FileKind::Debuginfo,
                    _ => continue,
                };
                let Some(stem) = path.file_stem().and_then(|x| x.to_str()) else {
                    continue;
                };
                let Ok(id) = BuildId::parse(&format!("{fan_name}{stem}")) else {
                    continue;
                };
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                out.push(StoredFile {
                    id,
                    kind,
                    path,
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out
    }

    /// Deletes a stored file (one of [`DebugInfoStore::files`]).
    pub fn remove(&self, file: &StoredFile) -> Result<(), Error> {
        match fs::remove_file(&file.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io(e)),
        }
    }

    fn insert_at(
        &self,
        id: &BuildId,
        reader: impl Read,
        max_bytes: u64,
        dest: PathBuf,
    ) -> Result<Stored, Error> {
        // Dropping `tmp` on any error path deletes it, so a failed upload leaves nothing behind.
        let tmp = NamedTempFile::with_prefix_in(".upload-", self.root.join(TMP_DIR))?;
        let written = copy_limited(reader, tmp.as_file(), max_bytes)?;

        let mut file = tmp.as_file();
        file.seek(SeekFrom::Start(0))?;
        // ReadCache reads only what the ELF parser asks for (headers, notes): no need to hold a
        // possibly huge upload in memory to check its build ID.
        let cache = object::read::ReadCache::new(file);
        let actual = read_build_id_from(&cache)?;
        if actual.as_ref() != Some(id) {
            return Err(Error::WrongBuildId {
                expected: id.as_str().to_owned(),
                actual: actual.map(|a| a.as_str().to_owned()),
            });
        }
        check_coverage(&cache, written)?;
        let new_contents = contents_of(&cache);
        drop(cache);

        let old_bytes = match fs::metadata(&dest) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Io(e)),
        };
        if let Some(old_bytes) = old_bytes {
            if old_bytes == written && same_bytes(tmp.as_file(), &dest)? {
                return Ok(Stored::Unchanged { bytes: written });
            }
            let old_contents = contents(&dest);
            if !new_contents.strictly_more_than(old_contents) {
                return Err(Error::Conflict(format!(
                    "a different file is already stored for build ID {id}, with {}; the upload \
                     has {}, which is not more",
                    old_contents.describe(),
                    new_contents.describe()
                )));
            }
        }

        // Durable before visible: a crash after the rename must not expose a truncated file.
        tmp.as_file().sync_all()?;
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        tmp.persist(&dest).map_err(|e| Error::Io(e.error))?;
        if let Some(dir) = dest.parent() {
            // Best effort: makes the rename itself durable; not all filesystems allow it.
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                tracing::debug!(dir = %dir.display(), error = %e, "fsync of store directory failed");
            }
        }
        tracing::info!(build_id = %id, bytes = written, path = %dest.display(), ?old_bytes, "debuginfo stored");
        Ok(match old_bytes {
            None => Stored::New { bytes: written },
            Some(old_bytes) => Stored::Replaced {
                bytes: written,
                old_bytes,
            },
        })
    }

    fn remove_stale_tmp_files(&self) {
        let dir = self.root.join(TMP_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list upload temp dir");
                return;
            }
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if stale {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(path = %entry.path().display(), "removed stale upload")
                    }
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove stale upload")
                    }
                }
            }
        }
    }
}

/// Copies `reader` into `out`, failing with `TooLarge` as soon as more than `max_bytes` arrive,
/// with `NotElf` as soon as the first bytes are not the ELF magic, and with `Padding` as soon as a
/// run of zero bytes exceeds [`MAX_ZERO_RUN`] (so junk is not written out in full first). Returns
/// the number of bytes written.
fn copy_limited(mut reader: impl Read, out: &File, max_bytes: u64) -> Result<u64, Error> {
    let mut out = BufWriter::new(out);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    // The identification bytes may arrive split over several reads.
    let mut head: Vec<u8> = Vec::with_capacity(EI_NIDENT);
    let mut zero_run: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        };
        let chunk = &buf[..n];
        if head.len() < EI_NIDENT {
            let take = (EI_NIDENT - head.len()).min(n);
            head.extend_from_slice(&chunk[..take]);
            check_ident(&head)?;
        }
        total += n as u64;
        if total > max_bytes {
            return Err(Error::TooLarge { limit: max_bytes });
        }
        zero_run = match chunk.iter().rposition(|&b| b != 0) {
            // Zeros after the last non-zero byte start the next run; a run that ended inside the
            // chunk is at most a chunk long, far below the limit.
            Some(last) => (n - 1 - last) as u64,
            None => zero_run + n as u64,
        };
        if zero_run > MAX_ZERO_RUN {
            return Err(Error::Padding(format!(
                "more than {} MiB of consecutive zero bytes",
                MAX_ZERO_RUN >> 20
            )));
        }
        out.write_all(chunk)?;
    }
    if head.len() < ELF_MAGIC.len() {
        return Err(Error::NotElf(format!("only {total} bytes")));
    }
    out.flush()?;
    Ok(total)
}

/// Length of the ELF identification (`e_ident`).
const EI_NIDENT: usize = 16;

/// Checks as much of the ELF identification as `head` holds: the magic, a known class (32 or 64
/// bit), byte order and version. Run as bytes arrive, so junk is refused before it is written out.
fn check_ident(head: &[u8]) -> Result<(), Error> {
    let magic = &head[..head.len().min(ELF_MAGIC.len())];
    if !ELF_MAGIC.starts_with(magic) {
        return Err(Error::NotElf("missing ELF magic".to_owned()));
    }
    let bad = |what: &str| Err(Error::NotElf(format!("bad ELF identification: {what}")));
    match head.get(4) {
        Some(1 | 2) | None => {}
        Some(_) => return bad("class is neither 32 nor 64 bit"),
    }
    match head.get(5) {
        Some(1 | 2) | None => {}
        Some(_) => return bad("unknown byte order"),
    }
    match head.get(6) {
        Some(1) | None => {}
        Some(_) => return bad("unknown version"),
    }
    Ok(())
}

/// Refuses a file whose sections and segments leave more than [`MAX_UNCOVERED_BYTES`] of it
/// unaccounted for: trailing or interleaved padding that no loader or debugger would read.
fn check_coverage<'data, R: object::ReadRef<'data>>(data: R, len: u64) -> Result<(), Error> {
    use object::{Object, ObjectSection, ObjectSegment};
    let file = object::File::parse(data).map_err(|e| Error::NotElf(e.to_string()))?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for s in file.sections() {
        // NOBITS sections (`.bss`, a debug file's code) occupy no file space.
        if s.kind() == object::SectionKind::UninitializedData {
            continue;
        }
        if let Some((off, size)) = s.file_range() {
            ranges.push((off, off.saturating_add(size)));
        }
    }
    for seg in file.segments() {
        let (off, size) = seg.file_range();
        ranges.push((off, off.saturating_add(size)));
    }
    ranges.sort_unstable();
    let mut covered = 0u64;
    let mut end = 0u64;
    for (start, stop) in ranges {
        let (start, stop) = (start.min(len), stop.min(len));
        if stop <= end {
            continue;
        }
        covered += stop - start.max(end);
        end = stop;
    }
    let uncovered = len.saturating_sub(covered);
    if uncovered > MAX_UNCOVERED_BYTES {
        return Err(Error::Padding(format!(
            "{uncovered} of its {len} bytes lie outside every section and segment"
        )));
    }
    Ok(())
}

fn contents_of<'data, R: object::ReadRef<'data>>(data: R) -> Contents {
    use object::{Object, ObjectSection};
    let Ok(elf) = object::File::parse(data) else {
        return Contents::default();
    };
    let mut c = Contents::default();
    for s in elf.sections() {
        if s.size() == 0 {
            continue;
        }
        match s.name() {
            Ok(".symtab") => c.symtab = true,
            Ok(".debug_info" | ".zdebug_info") => c.dwarf = true,
            _ => {}
        }
    }
    c
}

/// What the ELF at `path` carries (reads only its section headers). Unreadable: nothing.
pub fn contents(path: &Path) -> Contents {
    let Ok(file) = File::open(path) else {
        return Contents::default();
    };
    contents_of(&object::read::ReadCache::new(file))
}

/// Whether `a` (from its start) and the file at `b` hold the same bytes.
fn same_bytes(mut a: &File, b: &Path) -> Result<bool, Error> {
    a.seek(SeekFrom::Start(0))?;
    let mut b = io::BufReader::new(File::open(b)?);
    let mut a = io::BufReader::new(a);
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

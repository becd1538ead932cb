//! The on-disk debuginfo store: ELF files by build ID, written atomically and verified on upload.

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
    ) -> Result<(), Error> {
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
    /// Fails (storing nothing) above `max_bytes`, on non-ELF input, or on a build ID mismatch.
    /// Inserting an ID that is already stored replaces the file atomically (readers that have it
    /// open keep reading the old one), so better debuginfo for the same build can arrive later.
    pub fn insert_from_reader(
        &self,
        id: &BuildId,
        reader: impl Read,
        max_bytes: u64,
    ) -> Result<(), Error> {
        self.insert_at(id, reader, max_bytes, self.file_path(id))
    }

    fn insert_at(
        &self,
        id: &BuildId,
        reader: impl Read,
        max_bytes: u64,
        dest: PathBuf,
    ) -> Result<(), Error> {
        // Dropping `tmp` on any error path deletes it, so a failed upload leaves nothing behind.
        let tmp = NamedTempFile::with_prefix_in(".upload-", self.root.join(TMP_DIR))?;
        let written = copy_limited(reader, tmp.as_file(), max_bytes)?;

        let mut file = tmp.as_file();
        file.seek(SeekFrom::Start(0))?;
        // ReadCache reads only what the ELF parser asks for (headers, notes): no need to hold a
        // possibly huge upload in memory to check its build ID.
        let cache = object::read::ReadCache::new(file);
        let actual = read_build_id_from(&cache)?;
        drop(cache);
        if actual.as_ref() != Some(id) {
            return Err(Error::WrongBuildId {
                expected: id.as_str().to_owned(),
                actual: actual.map(|a| a.as_str().to_owned()),
            });
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
        tracing::info!(build_id = %id, bytes = written, path = %dest.display(), "debuginfo stored");
        Ok(())
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

/// Copies `reader` into `out`, failing with `TooLarge` as soon as more than `max_bytes` arrive and
/// with `NotElf` as soon as the first bytes are not the ELF magic (so junk is not written out in
/// full first). Returns the number of bytes written.
fn copy_limited(mut reader: impl Read, out: &File, max_bytes: u64) -> Result<u64, Error> {
    let mut out = BufWriter::new(out);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    // The magic may arrive split over several reads.
    let mut head: Vec<u8> = Vec::with_capacity(ELF_MAGIC.len());
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        };
        let chunk = &buf[..n];
        if head.len() < ELF_MAGIC.len() {
            let take = (ELF_MAGIC.len() - head.len()).min(n);
            head.extend_from_slice(&chunk[..take]);
            if !ELF_MAGIC.starts_with(&head) {
                return Err(Error::NotElf("missing ELF magic".to_owned()));
            }
        }
        total += n as u64;
        if total > max_bytes {
            return Err(Error::TooLarge { limit: max_bytes });
        }
        out.write_all(chunk)?;
    }
    if head.len() < ELF_MAGIC.len() {
        return Err(Error::NotElf(format!("only {total} bytes")));
    }
    out.flush()?;
    Ok(total)
}

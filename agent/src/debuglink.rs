//! Separate debuginfo: for a mapped ELF stripped of its symbol table and DWARF, finds the file
//! that holds them on the process's filesystem — `/usr/lib/debug/.build-id/xx/yyyy.debug`, or the
//! `.gnu_debuglink` name next to the binary, in its `.debug/`, or under `/usr/lib/debug/<dir>/` —
//! so the uploader can send it to the server as `?kind=debuginfo`.

use std::fs::File;
use std::path::{Path, PathBuf};

use object::Object;

use crate::buildid::BuildId;
use crate::process_files::{ProcessRoot, RegularFile};

/// Whether the ELF read from `file` has a symbol table or DWARF (then it needs no debug file).
/// Unparseable: `true`, so nothing is searched for a file we cannot judge.
///
/// Reads only the ELF header and the section headers with their names: `object::File::parse`
/// would also read the whole symbol table, megabytes for a large unstripped binary.
pub fn has_symbols(file: &File) -> bool {
    use object::elf::{FileHeader32, FileHeader64};
    let data = object::read::ReadCache::new(file);
    match object::FileKind::parse(&data) {
        Ok(object::FileKind::Elf64) => elf_has_symbols::<FileHeader64<object::Endianness>>(&data),
        Ok(object::FileKind::Elf32) => elf_has_symbols::<FileHeader32<object::Endianness>>(&data),
        _ => None,
    }
    .unwrap_or(true)
}

fn elf_has_symbols<H: object::read::elf::FileHeader<Endian = object::Endianness>>(
    data: &object::read::ReadCache<&File>,
) -> Option<bool> {
    use object::read::elf::SectionHeader;
    let header = H::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    Some(sections.iter().any(|s| {
        s.sh_size(endian).into() > 0
            && matches!(
                sections.section_name(endian, s),
                Ok(b".symtab" | b".debug_info" | b".zdebug_info")
            )
    }))
}

/// The `.gnu_debuglink` file name of the ELF read from `file`, if it has one.
fn debuglink(file: &File) -> Option<String> {
    let cache = object::read::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let (name, _crc) = elf.gnu_debuglink().ok()??;
    let name = std::str::from_utf8(name).ok()?;
    // A file name, never a path: a hostile binary must not point us elsewhere.
    (!name.is_empty() && !name.contains('/') && name != "." && name != "..")
        .then(|| name.to_owned())
}

/// Finds the separate debug file for the stripped `exe` (its path `exe_path` as the process sees
/// it) inside the process's root directory `root`, through the door to process files (regular
/// files of at most `max_bytes`). A candidate counts only if it carries the same build ID, so a
/// stale or unrelated file of the right name is never uploaded.
pub fn find_debug_file(
    root: &ProcessRoot,
    exe: &File,
    exe_path: &Path,
    build_id: &BuildId,
    max_bytes: u64,
) -> Option<RegularFile> {
    let hex = build_id.to_hex();
    let mut candidates = Vec::new();
    if hex.len() > 2 {
        let (fan, rest) = hex.split_at(2);
        candidates.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{fan}/{rest}.debug"
        )));
    }
    if let Some(name) = debuglink(exe)
        && let Some(dir) = exe_path.parent()
    {
        candidates.push(dir.join(&name));
        candidates.push(dir.join(".debug").join(&name));
        let under = dir.strip_prefix("/").unwrap_or(dir);
        candidates.push(Path::new("/usr/lib/debug").join(under).join(&name));
    }
    candidates.into_iter().find_map(|path| {
        let found = match root.open_file(&path, max_bytes) {
            Ok(f) => f,
            Err(e) => {
                if !e.is_not_found() {
                    tracing::debug!(build_id = %build_id, error = %e, "debug file candidate not opened");
                }
                return None;
            }
        };
        let matches = {
            let cache = object::read::ReadCache::new(found.file());
            kiln_buildid::elf_build_id(&cache)
                .ok()
                .flatten()
                .is_some_and(|b| b == build_id.as_bytes())
        };
        // Parsing moved the read position; the caller streams the file from the start.
        if matches && std::io::Seek::rewind(&mut found.file()).is_ok() {
            tracing::debug!(build_id = %build_id, path = %found.shown_path().display(), "found separate debuginfo");
            Some(found)
        } else {
            tracing::debug!(build_id = %build_id, path = %found.shown_path().display(), "debug file candidate has another build ID");
            None
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(cmd: &mut Command) -> bool {
        cmd.status().is_ok_and(|s| s.success())
    }

    /// (unstripped, stripped with debuglink, debug file) under `dir/opt/app/`; `None` without gcc.
    fn build(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
        let bin = dir.join("opt/app");
        std::fs::create_dir_all(&bin).unwrap();
        let src = bin.join("app.c");
        std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
        let exe = bin.join("app.full");
        let stripped = bin.join("app");
        let debug = dir.join("app.debug");
        let ok = run(Command::new("gcc")
            .args(["-g", "-Wl,--build-id=sha1", "-o"])
            .arg(&exe)
            .arg(&src))
            && run(Command::new("objcopy")
                .arg("--only-keep-debug")
                .arg(&exe)
                .arg(&debug))
            && run(Command::new("strip")
                .arg("--strip-all")
                .arg("-o")
                .arg(&stripped)
                .arg(&exe))
            && run(Command::new("objcopy")
                .arg(format!("--add-gnu-debuglink={}", debug.display()))
                .arg(&stripped));
        ok.then_some((exe, stripped, debug))
    }

    fn build_id_of(path: &Path) -> BuildId {
        let bytes = std::fs::read(path).unwrap();
        let elf = object::File::parse(bytes.as_slice()).unwrap();
        BuildId::new(elf.build_id().unwrap().unwrap()).unwrap()
    }

    #[test]
    fn finds_debug_file_by_build_id_and_by_debuglink() {
        let dir = tempfile::tempdir().unwrap();
        let Some((exe, stripped, debug)) = build(dir.path()) else {
            eprintln!("SKIPPED: gcc/binutils not available");
            return;
        };
        assert!(has_symbols(&File::open(&exe).unwrap()));
        let s = File::open(&stripped).unwrap();
        assert!(!has_symbols(&s));
        let id = build_id_of(&exe);
        let root = dir.path();
        let door = ProcessRoot::at(root).unwrap();
        let seen = Path::new("/opt/app/app");
        let find = |id: &BuildId| {
            find_debug_file(&door, &s, seen, id, 1 << 30).map(|f| f.shown_path().to_owned())
        };
        assert!(find(&id).is_none(), "nothing placed yet");

        // Next to the binary, by its .gnu_debuglink name.
        let link = root.join("opt/app/app.debug");
        std::fs::copy(&debug, &link).unwrap();
        assert_eq!(find(&id).unwrap(), link);
        std::fs::remove_file(&link).unwrap();

        // In /usr/lib/debug/.build-id/.
        let hex = id.to_hex();
        let by_id = root.join(format!(
            "usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        ));
        std::fs::create_dir_all(by_id.parent().unwrap()).unwrap();
        std::fs::copy(&debug, &by_id).unwrap();
        assert_eq!(find(&id).unwrap(), by_id);

        // A file of the right name but another build is not taken.
        std::fs::copy(&debug, &link).unwrap();
        let other = BuildId::new(&[0xab; 20]).unwrap();
        assert!(find(&other).is_none());
    }

    /// Candidates planted by a hostile container: a FIFO (opening it would block), a huge sparse
    /// file, and a symlink to the genuine debug file outside the root. None is read, and the
    /// sampling or uploading thread is not stalled.
    #[test]
    fn hostile_candidates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let Some((exe, stripped, debug)) = build(dir.path()) else {
            eprintln!("SKIPPED: gcc/binutils not available");
            return;
        };
        let s = File::open(&stripped).unwrap();
        let id = build_id_of(&exe);
        let root = dir.path();
        let door = ProcessRoot::at(root).unwrap();
        let seen = Path::new("/opt/app/app");
        let hex = id.to_hex();
        let by_id = root.join(format!(
            "usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        ));
        std::fs::create_dir_all(by_id.parent().unwrap()).unwrap();
        let fifo = std::ffi::CString::new(by_id.to_str().unwrap()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        // Next to the binary: a sparse file of 1 TiB.
        File::create(root.join("opt/app/app.debug"))
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        // In .debug/: a link to the genuine debug file by its path outside this root.
        std::fs::create_dir_all(root.join("opt/app/.debug")).unwrap();
        std::os::unix::fs::symlink(&debug, root.join("opt/app/.debug/app.debug")).unwrap();
        assert!(find_debug_file(&door, &s, seen, &id, 1 << 30).is_none());
        // The genuine file is found once it is inside the root, under the last candidate name.
        let under = root.join("usr/lib/debug/opt/app");
        std::fs::create_dir_all(&under).unwrap();
        std::fs::copy(&debug, under.join("app.debug")).unwrap();
        let found = find_debug_file(&door, &s, seen, &id, 1 << 30).unwrap();
        assert_eq!(found.shown_path(), under.join("app.debug"));
    }
}

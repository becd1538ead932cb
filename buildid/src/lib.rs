//! The identity of an object file, read one way for the whole of Kiln.
//!
//! The agent reports a build ID for each mapped file and the server stores uploaded debuginfo under
//! a build ID; the two must agree byte for byte, or an upload is refused as mismatched and frames
//! stay unsymbolized. So both read it here: the GNU build ID note (`NT_GNU_BUILD_ID`), or for a Go
//! binary without one (what `go build` makes by default) the key of its Go build ID
//! ([`go_build_id_key`]).

mod stream;

pub use stream::{MAX_PREFIX_BYTES, StreamScan, Streamed};

use object::Endianness;
use object::read::ReadRef;
use object::read::elf::{FileHeader, SectionHeader};

/// Longest build ID, in bytes, that the server accepts (128 hex digits).
pub const MAX_BUILD_ID_BYTES: usize = 64;

/// The identity of the ELF file in `data`: its GNU build ID note, else the key of its Go build ID
/// note (`.note.go.buildid`). `Ok(None)` when it has neither or is not ELF; `Err` for an ELF whose
/// headers or notes are malformed.
///
/// Reads the ELF header, the section table with its names, and the note sections: nothing else.
/// (`object::File::parse` would also read the whole `.symtab`, megabytes of an unstripped binary
/// such as Debian's `node`, or of an uploaded debug file, for a note of 20 bytes.) The GNU note is
/// the first `NT_GNU_BUILD_ID` note named `GNU` in any note section, as `object`'s `build_id` finds it.
pub fn elf_build_id<'d, R: ReadRef<'d>>(data: R) -> object::read::Result<Option<Vec<u8>>> {
    use object::elf::{FileHeader32, FileHeader64};
    match object::FileKind::parse(data) {
        Ok(object::FileKind::Elf32) => elf_notes_build_id::<FileHeader32<Endianness>, R>(data),
        Ok(object::FileKind::Elf64) => elf_notes_build_id::<FileHeader64<Endianness>, R>(data),
        _ => Ok(None),
    }
}

fn elf_notes_build_id<'d, H, R>(data: R) -> object::read::Result<Option<Vec<u8>>>
where
    H: FileHeader<Endian = Endianness>,
    R: ReadRef<'d>,
{
    let header = H::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    for section in sections.iter() {
        let Some(mut notes) = section.notes(endian, data)? else {
            continue;
        };
        while let Some(note) = notes.next()? {
            if note.name() == object::elf::ELF_NOTE_GNU
                && note.n_type(endian) == object::elf::NT_GNU_BUILD_ID
            {
                return Ok(Some(note.desc().to_vec()));
            }
        }
    }
    let Some((_, go)) = sections.section_by_name(endian, b".note.go.buildid") else {
        return Ok(None);
    };
    Ok(go
        .data(endian, data)
        .ok()
        .and_then(go_note_desc)
        .and_then(go_build_id_key))
}

/// The descriptor of the Go build ID note (`name "Go", type 4`) in a note section's bytes.
fn go_note_desc(data: &[u8]) -> Option<&[u8]> {
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (namesz, descsz, kind) = (word(0)?, word(4)?, word(8)?);
    let name = data.get(12..12usize.checked_add(namesz)?)?;
    let desc_at = 12 + namesz.div_ceil(4) * 4;
    (kind == 4 && name.split(|&b| b == 0).next().unwrap_or(name) == b"Go")
        .then(|| data.get(desc_at..desc_at.checked_add(descsz)?))
        .flatten()
}

/// A Go build ID (`actionID/contentID/...`, each part 20 characters of URL-safe base64) as build-ID
/// bytes: the parts decoded and concatenated (60 bytes for the usual four parts), which fits the
/// server's [`MAX_BUILD_ID_BYTES`] where the 83-character text would not. A build ID set by hand
/// (`-ldflags=-buildid=…`) that is not such base64 is used as it is when it fits.
pub fn go_build_id_key(text: &[u8]) -> Option<Vec<u8>> {
    let decoded: Option<Vec<u8>> =
        text.split(|&b| b == b'/')
            .try_fold(Vec::new(), |mut out, part| {
                let mut bits = 0u32;
                let mut nbits = 0;
                if part.is_empty() {
                    return None;
                }
                for &c in part {
                    let v = match c {
                        b'A'..=b'Z' => c - b'A',
                        b'a'..=b'z' => c - b'a' + 26,
                        b'0'..=b'9' => c - b'0' + 52,
                        b'-' => 62,
                        b'_' => 63,
                        _ => return None,
                    };
                    bits = (bits << 6) | u32::from(v);
                    nbits += 6;
                    if nbits >= 8 {
                        nbits -= 8;
                        out.push((bits >> nbits) as u8);
                        bits &= (1 << nbits) - 1;
                    }
                }
                Some(out)
            });
    match decoded {
        Some(d) if !d.is_empty() && d.len() <= MAX_BUILD_ID_BYTES => Some(d),
        _ => (!text.is_empty() && text.len() <= MAX_BUILD_ID_BYTES).then(|| text.to_vec()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What `go tool buildid` printed for a Go 1.19 binary, and Python's base64.urlsafe_b64decode of
    /// its parts.
    const GO_BUILD_ID: &str =
        "Ad0J6Hz157EFL3eqdkRs/dScsOUuoblHehDJRZyHR/SOIJI7yfYpblAaVm6ovj/n0KpKmdHao53dm-CantW";
    const GO_KEY_HEX: &str = "01dd09e87cf5e7b1052f77aa76446c75272c394ba86e51de8432516721d148e20923bc9f6296e501a566ea8be39f42a92a67476a8e77766f826a7b56";

    #[test]
    fn go_build_id_becomes_its_decoded_bytes() {
        let key = go_build_id_key(GO_BUILD_ID.as_bytes()).unwrap();
        assert_eq!(hex::encode(&key), GO_KEY_HEX);
        // Not base64 (set by hand): the text itself, if it fits; too long: nothing.
        assert_eq!(go_build_id_key(b"v1.2+x").unwrap(), b"v1.2+x");
        assert_eq!(go_build_id_key(&[b'+'; 65]), None);
        assert_eq!(go_build_id_key(b""), None);
        assert_eq!(go_build_id_key(b"abc//def").unwrap(), b"abc//def");
    }

    fn go_note(kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut note = Vec::new();
        for w in [4u32, desc.len() as u32, kind] {
            note.extend_from_slice(&w.to_le_bytes());
        }
        note.extend_from_slice(b"Go\0\0");
        note.extend_from_slice(desc);
        note
    }

    #[test]
    fn go_note_is_found_by_name_and_type() {
        let mut note = go_note(4, GO_BUILD_ID.as_bytes());
        assert_eq!(go_note_desc(&note), Some(GO_BUILD_ID.as_bytes()));
        assert_eq!(go_note_desc(&note[..10]), None, "cut short");
        assert_eq!(go_note_desc(&note[..20]), None, "descriptor cut short");
        note[8] = 3; // another note type
        assert_eq!(go_note_desc(&note), None);
        let mut huge = go_note(4, b"x");
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(go_note_desc(&huge), None, "sizes past the data");
    }

    /// A minimal little-endian ELF64 relocatable file with the given note sections.
    fn elf_with_notes(notes: &[(&str, Vec<u8>)]) -> Vec<u8> {
        const SHT_NOTE: u32 = 7;
        const SHT_STRTAB: u32 = 3;
        let mut names = vec![0u8];
        let mut sections = Vec::new(); // (name offset, type, data offset, size)
        let mut data = vec![0u8; 64];
        for (name, bytes) in notes {
            sections.push((
                names.len() as u32,
                SHT_NOTE,
                data.len() as u64,
                bytes.len() as u64,
            ));
            names.extend_from_slice(name.as_bytes());
            names.push(0);
            data.extend_from_slice(bytes);
            while !data.len().is_multiple_of(8) {
                data.push(0);
            }
        }
        let strtab_name = names.len() as u32;
        names.extend_from_slice(b".shstrtab\0");
        sections.push((
            strtab_name,
            SHT_STRTAB,
            data.len() as u64,
            names.len() as u64,
        ));
        data.extend_from_slice(&names);
        while !data.len().is_multiple_of(8) {
            data.push(0);
        }
        let shoff = data.len() as u64;
        data.extend_from_slice(&[0u8; 64]); // the null section
        for &(name, kind, offset, size) in &sections {
            data.extend_from_slice(&name.to_le_bytes());
            data.extend_from_slice(&kind.to_le_bytes());
            data.extend_from_slice(&0u64.to_le_bytes()); // flags
            data.extend_from_slice(&0u64.to_le_bytes()); // addr
            data.extend_from_slice(&offset.to_le_bytes());
            data.extend_from_slice(&size.to_le_bytes());
            data.extend_from_slice(&[0u8; 8]); // link, info
            data.extend_from_slice(&4u64.to_le_bytes()); // addralign
            data.extend_from_slice(&0u64.to_le_bytes()); // entsize
        }
        let h = &mut data[..64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little-endian
        h[6] = 1; // version
        h[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        h[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[40..48].copy_from_slice(&shoff.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        h[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        h[60..62].copy_from_slice(&(sections.len() as u16 + 1).to_le_bytes());
        h[62..64].copy_from_slice(&(sections.len() as u16).to_le_bytes()); // shstrndx
        data
    }

    /// A `Read + Seek` over a file that counts the bytes read through it.
    struct Counting {
        file: std::fs::File,
        read: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl std::io::Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.file.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    impl std::io::Seek for Counting {
        fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
            self.file.seek(pos)
        }
    }

    /// This unstripped test binary (megabytes of `.symtab` and DWARF) is identified as `object`
    /// identifies it, from a few KiB of it: the agent reads every mapped file this way, and the
    /// server every uploaded debug file.
    #[test]
    fn the_build_id_is_read_from_headers_and_notes_only() {
        use object::Object;
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let want = object::File::parse(&*exe)
            .unwrap()
            .build_id()
            .unwrap()
            .map(<[u8]>::to_vec);
        assert!(
            want.is_some(),
            "rustc links test binaries with a GNU build ID"
        );
        assert_eq!(elf_build_id(&*exe).unwrap(), want);

        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let counting = Counting {
            file: std::fs::File::open("/proc/self/exe").unwrap(),
            read: read.clone(),
        };
        let cache = object::read::ReadCache::new(counting);
        assert_eq!(elf_build_id(&cache).unwrap(), want);
        assert!(
            read.get() < 256 << 10,
            "read {} of {} bytes for a build ID",
            read.get(),
            exe.len()
        );
    }

    /// An ELF with only a Go build ID note (as `go build` writes them) is known by the note's key;
    /// with a GNU note as well, by the GNU note; with neither, by nothing.
    #[test]
    fn elf_identity_is_the_gnu_note_else_the_go_key() {
        let go = (".note.go.buildid", go_note(4, GO_BUILD_ID.as_bytes()));
        let mut gnu_note = Vec::new();
        for word in [4u32, 4, 3] {
            gnu_note.extend_from_slice(&word.to_le_bytes());
        }
        gnu_note.extend_from_slice(b"GNU\0\xde\xad\xbe\xef");
        let gnu = (".note.gnu.build-id", gnu_note);

        let go_only = elf_with_notes(std::slice::from_ref(&go));
        assert_eq!(
            hex::encode(elf_build_id(&*go_only).unwrap().unwrap()),
            GO_KEY_HEX
        );
        let both = elf_with_notes(&[go, gnu]);
        assert_eq!(
            elf_build_id(&*both).unwrap().unwrap(),
            [0xde, 0xad, 0xbe, 0xef]
        );
        let none = elf_with_notes(&[]);
        assert_eq!(elf_build_id(&*none).unwrap(), None);
        assert_eq!(elf_build_id(&b"not an object file"[..]).unwrap(), None);
    }
}

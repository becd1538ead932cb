//! The identity of an ELF file read while its bytes arrive, for uploads: the server refuses an
//! upload whose build ID is not the one in its URL as soon as the note is seen, instead of after
//! the whole body (possibly hundreds of MiB) was received and written out.
//!
//! The notes a loader sees are in `PT_NOTE` segments, described by the program headers; both
//! usually lie in the first page of the file (the headers right after the ELF header, the
//! `.note.gnu.build-id` and `.note.go.buildid` notes just after them). So the scanner keeps the
//! file's first bytes until it has the program headers and every `PT_NOTE` range, then looks
//! there for the GNU build ID note, which [`crate::elf_build_id`] ranks first: when it is there,
//! it is the file's identity.
//!
//! A Go build ID note alone decides nothing: the identity is the Go key only when the file has no
//! GNU note anywhere, and Go's linker (`-B`) puts its GNU note where no `PT_NOTE` segment covers
//! it, so a Go note seen early does not prove that there is no GNU note.
//!
//! What it cannot see early, it leaves undecided ([`Streamed::Undecided`]) rather than guessing:
//! a file without program headers (a relocatable object) or whose notes are not in any `PT_NOTE`
//! segment has its notes found through the section headers, which are at the end of the file; and
//! headers or notes beyond [`MAX_PREFIX_BYTES`] are not waited for. The caller then checks the
//! whole file when it is complete, as before; that check stays the authoritative one in every case
//! (a file whose segments and sections disagree is refused by one or the other).

use object::Endianness;
use object::elf::{FileHeader32, FileHeader64, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader};

/// Most leading bytes of a file kept to find its notes (headers and notes beyond are not waited
/// for: the upload is checked whole at the end instead).
pub const MAX_PREFIX_BYTES: usize = 1 << 20;

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

/// What the bytes seen so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Streamed {
    /// More bytes are needed.
    Pending,
    /// The identity: the GNU build ID note of one of the file's `PT_NOTE` segments.
    Identity(Vec<u8>),
    /// Nothing can be decided from the stream: not an ELF header the scanner reads, no program
    /// headers, no identity note in any `PT_NOTE` segment, or too far into the file. Only the
    /// complete file can tell.
    Undecided,
}

/// Finds a file's identity in its leading bytes; feed it the file in order.
#[derive(Debug)]
pub struct StreamScan {
    prefix: Vec<u8>,
    verdict: Streamed,
}

impl Default for StreamScan {
    fn default() -> Self {
        StreamScan {
            prefix: Vec::new(),
            verdict: Streamed::Pending,
        }
    }
}

impl StreamScan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the file; returns the verdict so far (once decided, it stays).
    pub fn feed(&mut self, bytes: &[u8]) -> &Streamed {
        if self.verdict != Streamed::Pending {
            return &self.verdict;
        }
        let room = MAX_PREFIX_BYTES - self.prefix.len();
        self.prefix
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.verdict = match self.prefix.get(4) {
            None => Streamed::Pending,
            Some(1) => decide::<FileHeader32<Endianness>>(&self.prefix),
            Some(2) => decide::<FileHeader64<Endianness>>(&self.prefix),
            Some(_) => Streamed::Undecided,
        };
        if self.verdict == Streamed::Pending && self.prefix.len() == MAX_PREFIX_BYTES {
            self.verdict = Streamed::Undecided;
        }
        if self.verdict != Streamed::Pending {
            // Decided: the prefix is not needed any more.
            self.prefix = Vec::new();
        }
        &self.verdict
    }

    /// The verdict so far.
    pub fn verdict(&self) -> &Streamed {
        &self.verdict
    }
}

/// The verdict on `prefix`, the first bytes of a file of ELF class `H`.
fn decide<H: FileHeader<Endian = Endianness>>(prefix: &[u8]) -> Streamed {
    if prefix.len() < std::mem::size_of::<H>() {
        return Streamed::Pending;
    }
    let Ok(header) = H::parse(prefix) else {
        return Streamed::Undecided;
    };
    let Ok(endian) = header.endian() else {
        return Streamed::Undecided;
    };
    let phoff: u64 = header.e_phoff(endian).into();
    let phnum = header.e_phnum(endian);
    // No program headers, or so many that their count is kept in the section headers (at the end).
    if phoff == 0 || phnum == 0 || phnum == object::elf::PN_XNUM {
        return Streamed::Undecided;
    }
    let headers_end = (usize::from(phnum))
        .checked_mul(usize::from(header.e_phentsize(endian)))
        .and_then(|n| usize::try_from(phoff).ok()?.checked_add(n));
    let Some(headers_end) = headers_end.filter(|&e| e <= MAX_PREFIX_BYTES) else {
        return Streamed::Undecided;
    };
    if prefix.len() < headers_end {
        return Streamed::Pending;
    }
    let Ok(phdrs) = header.program_headers(endian, prefix) else {
        return Streamed::Undecided;
    };
    let mut notes_end = 0usize;
    for p in phdrs.iter().filter(|p| p.p_type(endian) == PT_NOTE) {
        let (offset, size): (u64, u64) = (p.p_offset(endian).into(), p.p_filesz(endian).into());
        match offset
            .checked_add(size)
            .and_then(|e| usize::try_from(e).ok())
        {
            Some(end) if end <= MAX_PREFIX_BYTES => notes_end = notes_end.max(end),
            _ => return Streamed::Undecided,
        }
    }
    if prefix.len() < notes_end {
        return Streamed::Pending;
    }
    let mut gnu = None;
    for p in phdrs {
        let Ok(Some(mut notes)) = p.notes(endian, prefix) else {
            continue;
        };
        loop {
            match notes.next() {
                Ok(Some(n)) => {
                    if gnu.is_none() && n.name() == b"GNU" && n.n_type(endian) == NT_GNU_BUILD_ID {
                        gnu = Some(n.desc().to_vec());
                    }
                }
                Ok(None) => break,
                // Malformed notes: the complete file's check says what it makes of them.
                Err(_) => return Streamed::Undecided,
            }
        }
    }
    match gnu {
        Some(id) if !id.is_empty() => Streamed::Identity(id),
        _ => Streamed::Undecided,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object::Object;

    /// This test binary: rustc links it with a GNU build ID note in a `PT_NOTE` segment.
    fn own_exe() -> Vec<u8> {
        std::fs::read("/proc/self/exe").unwrap()
    }

    #[test]
    fn finds_the_build_id_in_the_first_bytes_fed_in_any_pieces() {
        let exe = own_exe();
        let want = object::File::parse(&*exe)
            .unwrap()
            .build_id()
            .unwrap()
            .unwrap()
            .to_vec();
        for piece in [1, 7, 64, 4096, 1 << 16] {
            let mut scan = StreamScan::new();
            let mut fed = 0;
            for chunk in exe.chunks(piece) {
                fed += chunk.len();
                if *scan.feed(chunk) != Streamed::Pending {
                    break;
                }
            }
            assert_eq!(
                *scan.verdict(),
                Streamed::Identity(want.clone()),
                "pieces of {piece}"
            );
            // Decided within the first pages, not at the end of a multi-MiB file.
            assert!(
                fed <= 8192usize.max(piece),
                "needed {fed} bytes in pieces of {piece}"
            );
            assert!(exe.len() > 4 * fed.max(8192));
        }
    }

    #[test]
    fn what_the_stream_cannot_tell_is_left_undecided() {
        let mut scan = StreamScan::new();
        assert_eq!(*scan.feed(b"\x7fEL"), Streamed::Pending);
        assert_eq!(*scan.feed(b"F\x09"), Streamed::Undecided, "unknown class");
        let mut scan = StreamScan::new();
        assert_eq!(
            *scan.feed(b"#!/bin/sh\n"),
            Streamed::Undecided,
            "not an ELF"
        );
        // An ELF header without program headers (a relocatable object): only the section headers
        // at the end tell.
        let mut exe = own_exe();
        exe[32..40].copy_from_slice(&0u64.to_le_bytes()); // e_phoff
        let mut scan = StreamScan::new();
        assert_eq!(*scan.feed(&exe[..4096]), Streamed::Undecided);
        // Program headers claimed past the prefix limit.
        let mut exe = own_exe();
        exe[32..40].copy_from_slice(&(MAX_PREFIX_BYTES as u64).to_le_bytes());
        let mut scan = StreamScan::new();
        assert_eq!(*scan.feed(&exe[..4096]), Streamed::Undecided);
        // A prefix that never completes the headers stops at the limit.
        let mut exe = own_exe();
        exe[32..40].copy_from_slice(&((MAX_PREFIX_BYTES / 2) as u64).to_le_bytes());
        let mut scan = StreamScan::new();
        assert_eq!(*scan.feed(&exe[..64]), Streamed::Pending);
        assert_eq!(
            *scan.feed(&vec![1u8; MAX_PREFIX_BYTES]),
            Streamed::Undecided
        );
    }
}

//! Build IDs: the validated hex key under which debuginfo is stored, and reading it from an ELF.

use std::fmt;

use object::read::ReadRef;
use object::{FileKind, Object};

use crate::Error;

/// A GNU build ID, lowercase hex, 2..=128 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(String);

impl BuildId {
    /// Validates and normalizes (lowercases) a hex build ID.
    pub fn parse(s: &str) -> Result<BuildId, Error> {
        // Even length: a build ID is bytes; the upper bound keeps hostile URLs from becoming paths
        // longer than a file name may be.
        let ok = (2..=128).contains(&s.len())
            && s.len().is_multiple_of(2)
            && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(Error::BadBuildId(s.to_owned()));
        }
        Ok(BuildId(s.to_ascii_lowercase()))
    }

    /// The build ID from its raw bytes (as found in an ELF note).
    pub fn from_bytes(bytes: &[u8]) -> Result<BuildId, Error> {
        BuildId::parse(&hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the GNU build ID note (`NT_GNU_BUILD_ID`) of an ELF image.
///
/// `Ok(None)` for an ELF without one; `Err(NotElf)` for anything that is not a parseable ELF.
pub fn read_build_id(elf: &[u8]) -> Result<Option<BuildId>, Error> {
    read_build_id_from(elf)
}

/// Like [`read_build_id`], over any `object` data source; the store passes a `ReadCache` over the
/// uploaded file so that only the headers and notes are read, not the whole (possibly huge) file.
pub(crate) fn read_build_id_from<'data, R: ReadRef<'data>>(
    data: R,
) -> Result<Option<BuildId>, Error> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf32 | FileKind::Elf64) => {}
        Ok(kind) => return Err(Error::NotElf(format!("object file of kind {kind:?}"))),
        Err(e) => return Err(Error::NotElf(e.to_string())),
    }
    let file = object::File::parse(data).map_err(|e| Error::NotElf(e.to_string()))?;
    let raw = file
        .build_id()
        .map_err(|e| Error::NotElf(format!("malformed notes: {e}")))?
        .map(<[u8]>::to_vec)
        .or_else(|| go_build_id(&file));
    match raw {
        // A zero-length or absurdly long note is no usable key: treat it as absent rather than
        // failing, so the caller reports a build ID mismatch with `actual: None`.
        Some(bytes) => Ok(BuildId::from_bytes(&bytes).ok()),
        None => Ok(None),
    }
}

/// A Go binary without a GNU build ID (what `go build` makes by default) is known by its Go build
/// ID, as the agent reports it (`kiln_agent::buildid::elf_build_id`).
fn go_build_id<'data, R: ReadRef<'data>>(file: &object::File<'data, R>) -> Option<Vec<u8>> {
    use object::ObjectSection;
    let data = file.section_by_name(".note.go.buildid")?.data().ok()?;
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (namesz, descsz, kind) = (word(0)?, word(4)?, word(8)?);
    let name = data.get(12..12 + namesz)?;
    let desc_at = 12 + namesz.div_ceil(4) * 4;
    if kind != 4 || name.split(|&b| b == 0).next().unwrap_or(name) != b"Go" {
        return None;
    }
    go_build_id_key(data.get(desc_at..desc_at + descsz)?)
}

/// A Go build ID (`actionID/contentID/...`, parts of URL-safe base64) as build-ID bytes: the parts
/// decoded and concatenated (60 bytes for the usual four), within the 64-byte limit the 83-character
/// text would exceed; a hand-set ID that is not such base64 is used as it is when it fits. Must
/// match the agent's `go_build_id_key`, or uploads of Go binaries are refused as mismatched.
pub(crate) fn go_build_id_key(text: &[u8]) -> Option<Vec<u8>> {
    const MAX: usize = 64;
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
        Some(d) if !d.is_empty() && d.len() <= MAX => Some(d),
        _ => (!text.is_empty() && text.len() <= MAX).then(|| text.to_vec()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_build_id_key_matches_the_agents() {
        // The agent's test (agent/src/buildid.rs) holds the same pair.
        let key = go_build_id_key(
            b"Ad0J6Hz157EFL3eqdkRs/dScsOUuoblHehDJRZyHR/SOIJI7yfYpblAaVm6ovj/n0KpKmdHao53dm-CantW",
        )
        .unwrap();
        assert_eq!(
            hex::encode(key),
            "01dd09e87cf5e7b1052f77aa76446c75272c394ba86e51de8432516721d148e20923bc9f6296e501a566ea8be39f42a92a67476a8e77766f826a7b56"
        );
        assert_eq!(go_build_id_key(b"v1.2+x").unwrap(), b"v1.2+x");
        assert_eq!(go_build_id_key(&[b'+'; 65]), None);
    }

    #[test]
    fn parse_accepts_and_lowercases_hex() {
        let id = BuildId::parse("ABcd01").unwrap();
        assert_eq!(id.as_str(), "abcd01");
        assert_eq!(id.to_string(), "abcd01");
        assert_eq!(id, BuildId::parse("abcd01").unwrap());
    }

    #[test]
    fn parse_length_bounds() {
        assert!(BuildId::parse("").is_err());
        assert!(BuildId::parse("a").is_err());
        assert!(BuildId::parse("ab").is_ok());
        assert!(
            BuildId::parse("abc").is_err(),
            "odd length is not whole bytes"
        );
        assert!(BuildId::parse(&"a".repeat(128)).is_ok());
        assert!(BuildId::parse(&"a".repeat(130)).is_err());
    }

    #[test]
    fn parse_rejects_non_hex_and_path_tricks() {
        for bad in ["zz", "../..", "ab/cd", "ab cd", "0x12", "éé"] {
            assert!(
                matches!(BuildId::parse(bad), Err(Error::BadBuildId(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn from_bytes_is_hex() {
        let id = BuildId::from_bytes(&[0xde, 0xad, 0xBE, 0xef]).unwrap();
        assert_eq!(id.as_str(), "deadbeef");
        assert!(BuildId::from_bytes(&[]).is_err());
    }

    #[test]
    fn read_build_id_rejects_non_elf() {
        assert!(matches!(
            read_build_id(b"hello, world, this is not an ELF file at all"),
            Err(Error::NotElf(_))
        ));
        assert!(matches!(read_build_id(b""), Err(Error::NotElf(_))));
    }
}

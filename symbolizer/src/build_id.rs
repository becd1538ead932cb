//! Build IDs: the validated hex key under which debuginfo is stored, and reading it from an ELF.

use std::fmt;

use object::FileKind;
use object::read::ReadRef;

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
    // The same reading as the agent's, so that an upload matches the build ID the agent reported.
    let raw = kiln_buildid::elf_build_id(data)
        .map_err(|e| Error::NotElf(format!("malformed ELF headers or notes: {e}")))?;
    match raw {
        // A zero-length or absurdly long note is no usable key: treat it as absent rather than
        // failing, so the caller reports a build ID mismatch with `actual: None`.
        Some(bytes) => Ok(BuildId::from_bytes(&bytes).ok()),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

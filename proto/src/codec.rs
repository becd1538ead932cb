//! Encoding and decoding profiles, gzip-aware and bounded.
//!
//! Every decoder takes a `max_decompressed` limit so that a small gzip bomb cannot make a reader
//! allocate gigabytes: the limit is checked while inflating, not after.

use std::io::{Read, Write};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message;

use crate::pprof::Profile;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("gzip data is corrupt or truncated: {0}")]
    Gzip(std::io::Error),
    #[error("decompressed data exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not a valid pprof profile: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// True when `data` starts with the gzip magic bytes.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&GZIP_MAGIC)
}

/// Inflates `data` when it is gzip (by its magic bytes), else borrows it; never yields more than
/// `max_decompressed` bytes.
pub fn maybe_gunzip(
    data: &[u8],
    max_decompressed: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, CodecError> {
    if !is_gzip(data) {
        if data.len() > max_decompressed {
            return Err(CodecError::TooLarge {
                limit: max_decompressed,
            });
        }
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    gunzip_limited(data, max_decompressed).map(std::borrow::Cow::Owned)
}

/// Inflates gzip `data`, failing as soon as the output would exceed `limit` bytes.
pub fn gunzip_limited(data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    // Read one byte past the limit: if it arrives, the input is too large.
    let mut reader = GzDecoder::new(data).take(limit as u64 + 1);
    reader.read_to_end(&mut out).map_err(CodecError::Gzip)?;
    if out.len() > limit {
        return Err(CodecError::TooLarge { limit });
    }
    Ok(out)
}

/// Decodes a pprof profile that may be gzipped.
pub fn decode_profile(data: &[u8], max_decompressed: usize) -> Result<Profile, CodecError> {
    let raw = maybe_gunzip(data, max_decompressed)?;
    Ok(Profile::decode(raw.as_ref())?)
}

/// Encodes `profile` as gzipped protobuf, the form `go tool pprof` and Pyroscope expect on disk.
pub fn encode_profile_gzip(profile: &Profile) -> Vec<u8> {
    gzip(&profile.encode_to_vec())
}

/// Gzips `data` at the default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 3 + 64),
        Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProfileBuilder;

    #[test]
    fn roundtrip_gzip_and_raw() {
        let mut b = ProfileBuilder::new(&[("samples", "count")]);
        let f = b.function("main", "main.c");
        let loc = b.symbolized_location(0, 0x1000, &[(f, 3)]);
        b.add_sample(&[loc], &[7], &[]);
        let p = b.finish();
        let gz = encode_profile_gzip(&p);
        assert!(is_gzip(&gz));
        assert_eq!(decode_profile(&gz, 1 << 20).unwrap(), p);
        assert_eq!(decode_profile(&p.encode_to_vec(), 1 << 20).unwrap(), p);
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 100_000);
        match maybe_gunzip(&bomb, 1 << 20) {
            Err(CodecError::TooLarge { limit }) => assert_eq!(limit, 1 << 20),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let gz = gzip(b"hello world, hello world, hello world");
        assert!(matches!(
            maybe_gunzip(&gz[..gz.len() - 6], 1 << 20),
            Err(CodecError::Gzip(_))
        ));
    }
}

//! The segment file format: a magic header, then records framed as
//! `[payload length u32 LE][CRC32 of payload u32 LE][payload]`, where the payload is
//! `[header length u32 LE][RecordHeader protobuf][compressed pprof]`, the pprof zstd-compressed,
//! or gzipped as the client sent it (told apart by their magic numbers).
//!
//! The CRC makes a torn write (crash mid-append) or bit rot detectable, so a scan can stop at the
//! last good record instead of feeding garbage to the index.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use kiln_proto::push::LabelPair;
use prost::Message;

use super::{Labels, NewProfile, StoreError};

pub const SEGMENT_MAGIC: &[u8; 8] = b"KILNSEG1";
pub const FRAME_HEADER_LEN: u64 = 8;
/// No record is larger than this; a bigger length field means corruption, not a huge record.
pub const MAX_RECORD_BYTES: usize = 1 << 30;
const ZSTD_LEVEL: i32 = 3;

/// The part of a record the index needs, kept apart from the (large) profile.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordHeader {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(int64, tag = "2")]
    pub time_nanos: i64,
    #[prost(string, repeated, tag = "3")]
    pub profile_types: Vec<String>,
}

impl RecordHeader {
    pub fn labels(&self) -> Labels {
        Labels::new(
            self.labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect(),
        )
    }
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The segment id in a file name made by [`segment_path`].
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Appends `p` to `out` as a complete frame (written in place: the profile is copied once, from
/// the request into the batch that is written); returns the frame's length.
pub fn encode_record(p: &NewProfile, out: &mut Vec<u8>) -> Result<usize, StoreError> {
    let header = RecordHeader {
        labels: p
            .labels
            .iter()
            .map(|(name, value)| LabelPair {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect(),
        time_nanos: p.time_nanos,
        profile_types: p.profile_types.clone(),
    }
    .encode_to_vec();
    // Already gzipped (as clients send it, and as ingest passes it on): kept as is. Compressing it
    // again was the largest cost of a push after decoding.
    let compressed;
    let body: &[u8] = if kiln_proto::codec::is_gzip(&p.pprof) {
        &p.pprof
    } else {
        compressed =
            zstd::bulk::compress(&p.pprof, ZSTD_LEVEL).map_err(|source| StoreError::Io {
                path: "zstd".to_owned(),
                source,
            })?;
        &compressed
    };
    let payload_len = 4 + header.len() + body.len();
    if payload_len > MAX_RECORD_BYTES {
        return Err(StoreError::RecordTooLarge(payload_len));
    }
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN as usize + payload_len);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    let frame = &mut out[start..];
    let crc = crc32fast::hash(&frame[FRAME_HEADER_LEN as usize..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame.len())
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The file ends inside the frame (a torn append).
    Truncated,
    Corrupt(String),
    Io(std::io::Error),
}

/// Splits a verified payload into its header and compressed profile.
pub fn split_payload(payload: &[u8]) -> Result<(RecordHeader, &[u8]), FrameError> {
    let Some((len_bytes, rest)) = payload.split_first_chunk::<4>() else {
        return Err(FrameError::Corrupt(
            "payload shorter than its header length".into(),
        ));
    };
    let header_len = u32::from_le_bytes(*len_bytes) as usize;
    if header_len > rest.len() {
        return Err(FrameError::Corrupt("header length exceeds payload".into()));
    }
    let (header, body) = rest.split_at(header_len);
    let header = RecordHeader::decode(header)
        .map_err(|e| FrameError::Corrupt(format!("bad record header: {e}")))?;
    Ok((header, body))
}

/// Checks a frame header + payload read from disk; returns the payload.
pub fn verify_frame(frame_header: [u8; 8], payload: &[u8]) -> Result<(), FrameError> {
    let crc = u32::from_le_bytes([
        frame_header[4],
        frame_header[5],
        frame_header[6],
        frame_header[7],
    ]);
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Corrupt("CRC mismatch".into()));
    }
    Ok(())
}

pub fn frame_len(frame_header: [u8; 8]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes([
        frame_header[0],
        frame_header[1],
        frame_header[2],
        frame_header[3],
    ]) as usize;
    if !(4..=MAX_RECORD_BYTES).contains(&len) {
        return Err(FrameError::Corrupt(format!(
            "implausible record length {len}"
        )));
    }
    Ok(len)
}

/// Inflates a stored profile (zstd, or gzip as sent), refusing more than `limit` bytes.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
    if kiln_proto::codec::is_gzip(body) {
        return kiln_proto::codec::gunzip_limited(body, limit).map_err(|e| match e {
            kiln_proto::CodecError::TooLarge { .. } => {
                FrameError::Corrupt(format!("profile inflates beyond {limit} bytes"))
            }
            e => FrameError::Corrupt(format!("gzip: {e}")),
        });
    }
    let decoder = zstd::stream::read::Decoder::new(body).map_err(FrameError::Io)?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| FrameError::Corrupt(format!("zstd: {e}")))?;
    if out.len() > limit {
        return Err(FrameError::Corrupt(format!(
            "profile inflates beyond {limit} bytes"
        )));
    }
    Ok(out)
}

/// One good record found by [`scan`].
pub struct ScannedRecord {
    pub offset: u64,
    pub len: u32,
    pub header: RecordHeader,
}

/// The result of reading a whole segment.
pub struct Scan {
    pub records: Vec<ScannedRecord>,
    /// Length of the good prefix (magic + good records).
    pub good_len: u64,
    /// Why scanning stopped before the end of the file, if it did.
    pub stopped: Option<String>,
    pub file_len: u64,
}

/// Reads every record of a segment file, stopping at the first bad one.
pub fn scan(path: &Path) -> Result<Scan, std::io::Error> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    let mut scan = Scan {
        records: Vec::new(),
        good_len: 0,
        stopped: None,
        file_len,
    };
    match r.read_exact(&mut magic) {
        Ok(()) if &magic == SEGMENT_MAGIC => {}
        Ok(()) => {
            scan.stopped = Some("not a Kiln segment (bad magic)".into());
            return Ok(scan);
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            scan.stopped = Some("file shorter than the segment header".into());
            return Ok(scan);
        }
        Err(e) => return Err(e),
    }
    let mut offset = SEGMENT_MAGIC.len() as u64;
    scan.good_len = offset;
    let mut payload = Vec::new();
    while offset < file_len {
        match read_one(&mut r, file_len - offset, &mut payload) {
            Ok(header) => {
                let len = payload.len() as u32;
                scan.records.push(ScannedRecord {
                    offset,
                    len,
                    header,
                });
                offset += FRAME_HEADER_LEN + u64::from(len);
                scan.good_len = offset;
            }
            Err(FrameError::Io(e)) => return Err(e),
            Err(FrameError::Truncated) => {
                scan.stopped = Some(format!("torn record at offset {offset}"));
                break;
            }
            Err(FrameError::Corrupt(why)) => {
                scan.stopped = Some(format!("corrupt record at offset {offset}: {why}"));
                break;
            }
        }
    }
    Ok(scan)
}

fn read_one(
    r: &mut impl Read,
    remaining: u64,
    payload: &mut Vec<u8>,
) -> Result<RecordHeader, FrameError> {
    if remaining < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let mut fh = [0u8; 8];
    r.read_exact(&mut fh).map_err(FrameError::Io)?;
    let len = frame_len(fh)?;
    if len as u64 > remaining - FRAME_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    payload.resize(len, 0);
    r.read_exact(payload).map_err(FrameError::Io)?;
    verify_frame(fh, payload)?;
    let (header, _) = split_payload(payload)?;
    Ok(header)
}

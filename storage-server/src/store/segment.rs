//! The segment file format, and the scan that reads a segment back past any damage.
//!
//! A segment is an 8-byte magic, then frames. Version 2 (`KILNSEG2`, written today) frames are
//! `[sync u32][payload length u32 LE][CRC32 of payload u32 LE][CRC32 of the previous 12 bytes]`
//! then the payload; version 1 (`KILNSEG1`, read only) frames are `[length][CRC of payload]` then
//! the payload. The payload is `[header length u32 LE][RecordHeader protobuf][compressed pprof]`,
//! the pprof zstd-compressed, or gzipped as the client sent it (told apart by their magic numbers).
//!
//! Why the sync marker and the header CRC: every record carries its own CRC, so one damaged record
//! must cost only itself. With a verified header the scan skips a record whose payload is bad by
//! its length; when the header itself is bad, the scan looks forward for the next position where
//! the sync marker begins a header whose CRC verifies (a false match needs 64 bits to line up),
//! and carries on from there. Whatever follows the last good record (a torn append after a crash,
//! or damage to the last records) is the segment's tail, which start-up cuts off the active
//! segment. Version 1 frames have neither, so the scan tries every position whose length, header
//! length and payload CRC all check out, which is slower but finds the same records.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_proto::push::LabelPair;
use prost::Message;

use super::{Labels, NewProfile, StoreError};

/// The magic of the segments written today.
pub const SEGMENT_MAGIC: &[u8; 8] = b"KILNSEG2";
/// The magic of segments written before frames had a sync marker (still read).
pub const SEGMENT_MAGIC_V1: &[u8; 8] = b"KILNSEG1";
/// Starts every version 2 frame: what a scan past damage looks for.
pub const FRAME_SYNC: [u8; 4] = [0xC7, 0x4B, 0x46, 0x52];
/// Length of a version 2 frame header (sync, length, payload CRC, header CRC).
pub const FRAME_HEADER_LEN: u64 = 16;
/// No record is larger than this; a bigger length field means corruption, not a huge record.
pub const MAX_RECORD_BYTES: usize = 1 << 30;
/// A record header (labels, time, types) is small; a larger header length means a false match.
const MAX_RECORD_HEADER_BYTES: usize = 1 << 20;
const ZSTD_LEVEL: i32 = 3;
/// How much a resynchronising scan reads at a time.
const SCAN_CHUNK: usize = 1 << 20;

/// The frame layout of a segment, from its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `[length][payload CRC]` frames: no sync marker, no header CRC.
    V1,
    /// `[sync][length][payload CRC][header CRC]` frames.
    V2,
}

impl Version {
    fn from_magic(magic: &[u8]) -> Option<Version> {
        if magic == SEGMENT_MAGIC {
            Some(Version::V2)
        } else if magic == SEGMENT_MAGIC_V1 {
            Some(Version::V1)
        } else {
            None
        }
    }
    pub fn frame_header_len(self) -> u64 {
        match self {
            Version::V1 => 8,
            Version::V2 => FRAME_HEADER_LEN,
        }
    }
}

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

/// Where [`encode_record`] put a record's payload within the buffer it appended to.
#[derive(Clone, Copy, Debug)]
pub struct Encoded {
    /// Offset of the payload from the start of the frame.
    pub payload_at: u64,
    pub payload_len: u32,
    pub crc: u32,
}

/// Appends `p` to `out` as a complete version 2 frame (written in place: the profile is copied
/// once, from the request into the batch that is written).
pub fn encode_record(p: &NewProfile, out: &mut Vec<u8>) -> Result<Encoded, StoreError> {
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
    let hl = FRAME_HEADER_LEN as usize;
    out.reserve(hl + payload_len);
    out.extend_from_slice(&FRAME_SYNC);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    let frame = &mut out[start..];
    let crc = crc32fast::hash(&frame[hl..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&frame[..12]);
    frame[12..16].copy_from_slice(&header_crc.to_le_bytes());
    Ok(Encoded {
        payload_at: FRAME_HEADER_LEN,
        payload_len: payload_len as u32,
        crc,
    })
}

/// Why a record could not be read.
#[derive(Debug)]
pub enum FrameError {
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

/// Checks a payload read back against the CRC its frame (or the index) recorded.
pub fn verify_payload(crc: u32, payload: &[u8]) -> Result<(), FrameError> {
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Corrupt("CRC mismatch".into()));
    }
    Ok(())
}

/// Inflates a stored profile (zstd, or gzip as sent), refusing more than `limit` bytes.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
    use std::io::Read;
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
#[derive(Debug)]
pub struct ScannedRecord {
    /// Where its payload starts in the file.
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
    pub header: RecordHeader,
}

/// A stretch of a segment that holds no readable record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// The result of reading a whole segment.
#[derive(Debug)]
pub struct Scan {
    /// The frame layout: from the magic, or from the frames found when the magic is damaged.
    pub version: Option<Version>,
    /// Whether the file starts with a known magic.
    pub magic_ok: bool,
    pub records: Vec<ScannedRecord>,
    /// Damaged stretches between good records, skipped (the records on both sides are kept).
    /// A stretch whose frame header was intact is exactly one record.
    pub damaged: Vec<Damage>,
    /// End of the last good record (or of the magic): where appending may go on.
    pub good_len: u64,
    /// Whatever follows the last good record: a torn append, or damage to the last record(s).
    pub tail: Option<Damage>,
    pub file_len: u64,
}

impl Scan {
    fn new(file_len: u64) -> Scan {
        Scan {
            version: None,
            magic_ok: false,
            records: Vec::new(),
            damaged: Vec::new(),
            good_len: 0,
            tail: None,
            file_len,
        }
    }
}

/// Reads every readable record of a segment file, skipping damaged ones (see the module docs).
pub fn scan(path: &Path) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut scan = Scan::new(file_len);
    let magic_len = SEGMENT_MAGIC.len() as u64;
    if file_len < magic_len {
        if file_len > 0 {
            scan.tail = Some(Damage {
                offset: 0,
                len: file_len,
                reason: "file shorter than the segment header".into(),
            });
        }
        return Ok(scan);
    }
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0)?;
    if let Some(v) = Version::from_magic(&magic) {
        scan.magic_ok = true;
        frames(&file, v, &mut scan)?;
        return Ok(scan);
    }
    // The magic alone may be damaged: the frames say which layout this is.
    for v in [Version::V2, Version::V1] {
        let mut guess = Scan::new(file_len);
        frames(&file, v, &mut guess)?;
        if !guess.records.is_empty() {
            return Ok(guess);
        }
    }
    scan.tail = Some(Damage {
        offset: 0,
        len: file_len,
        reason: "not a Kiln segment (bad magic, no readable record)".into(),
    });
    Ok(scan)
}

/// What [`read_frame`] found at one position.
enum Frame {
    Good {
        header: RecordHeader,
        crc: u32,
    },
    /// The header is verified, so its length is right: the next frame starts at `next`.
    BadPayload {
        next: u64,
        reason: String,
    },
    /// Nothing here can be trusted, not even the length: resynchronise.
    BadHeader {
        reason: String,
    },
}

/// Scans the frames of `file` after its magic into `scan`.
fn frames(file: &File, v: Version, scan: &mut Scan) -> std::io::Result<()> {
    let file_len = scan.file_len;
    let hl = v.frame_header_len();
    scan.version = Some(v);
    let mut at = SEGMENT_MAGIC.len() as u64;
    scan.good_len = at;
    let mut damage = Vec::new();
    let mut payload = Vec::new();
    while at < file_len {
        match read_frame(file, file_len, v, at, &mut payload)? {
            Frame::Good { header, crc } => {
                let len = payload.len() as u32;
                scan.records.push(ScannedRecord {
                    offset: at + hl,
                    len,
                    crc,
                    header,
                });
                at += hl + u64::from(len);
                scan.good_len = at;
            }
            Frame::BadPayload { next, reason } => {
                damage.push(Damage {
                    offset: at,
                    len: next - at,
                    reason,
                });
                at = next;
            }
            Frame::BadHeader { reason } => {
                let next = resync(file, file_len, v, at + 1, &mut payload)?.unwrap_or(file_len);
                damage.push(Damage {
                    offset: at,
                    len: next - at,
                    reason,
                });
                at = next;
            }
        }
    }
    let good_len = scan.good_len;
    let (before, tail): (Vec<Damage>, Vec<Damage>) =
        damage.into_iter().partition(|d| d.offset < good_len);
    scan.damaged = before;
    if let Some(first) = tail.into_iter().next() {
        scan.tail = Some(Damage {
            offset: first.offset,
            len: file_len - first.offset,
            reason: first.reason,
        });
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Whether `h` (at least 16 bytes) is a version 2 frame header whose own CRC verifies.
fn v2_header_ok(h: &[u8]) -> bool {
    h[..4] == FRAME_SYNC && crc32fast::hash(&h[..12]) == u32_at(h, 12)
}

/// Reads the frame at `at`, its payload into `payload`.
fn read_frame(
    file: &File,
    file_len: u64,
    v: Version,
    at: u64,
    payload: &mut Vec<u8>,
) -> std::io::Result<Frame> {
    let hl = v.frame_header_len();
    let bad_header = |reason: String| Ok(Frame::BadHeader { reason });
    if file_len - at < hl {
        return bad_header(format!("torn frame header at offset {at}"));
    }
    let mut fh = [0u8; FRAME_HEADER_LEN as usize];
    let fh = &mut fh[..hl as usize];
    file.read_exact_at(fh, at)?;
    let (len, crc) = match v {
        Version::V2 => {
            if fh[..4] != FRAME_SYNC {
                return bad_header(format!("no frame sync marker at offset {at}"));
            }
            if !v2_header_ok(fh) {
                return bad_header(format!("frame header at offset {at} fails its CRC"));
            }
            (u32_at(fh, 4) as usize, u32_at(fh, 8))
        }
        Version::V1 => (u32_at(fh, 0) as usize, u32_at(fh, 4)),
    };
    if !(4..=MAX_RECORD_BYTES).contains(&len) {
        return bad_header(format!("implausible record length {len} at offset {at}"));
    }
    if len as u64 > file_len - at - hl {
        return bad_header(format!(
            "record at offset {at} runs past the end of the file (a torn append)"
        ));
    }
    payload.resize(len, 0);
    file.read_exact_at(payload, at + hl)?;
    let next = at + hl + len as u64;
    // Without a header CRC (version 1) a bad record's length cannot be trusted either.
    let bad = |reason: String| {
        Ok(match v {
            Version::V2 => Frame::BadPayload { next, reason },
            Version::V1 => Frame::BadHeader { reason },
        })
    };
    if crc32fast::hash(payload) != crc {
        return bad(format!("record at offset {at} fails its CRC"));
    }
    match split_payload(payload) {
        Ok((header, _)) => Ok(Frame::Good { header, crc }),
        Err(FrameError::Corrupt(why)) => bad(format!("record at offset {at}: {why}")),
        Err(FrameError::Io(e)) => Err(e),
    }
}

/// The first position at or after `from` where a frame plausibly starts: for version 2, a sync
/// marker beginning a header whose CRC verifies; for version 1, a length, header length and
/// payload CRC that all check out. `None` when there is none before the end of the file.
fn resync(
    file: &File,
    file_len: u64,
    v: Version,
    from: u64,
    payload: &mut Vec<u8>,
) -> std::io::Result<Option<u64>> {
    let hl = v.frame_header_len() as usize;
    let mut pos = from;
    let mut buf = Vec::new();
    while pos + hl as u64 <= file_len {
        let n = (file_len - pos).min((SCAN_CHUNK + hl) as u64) as usize;
        buf.resize(n, 0);
        file.read_exact_at(&mut buf, pos)?;
        // Candidates whose whole header lies in this window; the next window overlaps the rest.
        let last = n - hl;
        for i in 0..=last {
            let p = pos + i as u64;
            let found = match v {
                Version::V2 => buf[i] == FRAME_SYNC[0] && v2_header_ok(&buf[i..i + hl]),
                Version::V1 => v1_candidate(file, file_len, p, &buf[i..], payload)?,
            };
            if found {
                return Ok(Some(p));
            }
        }
        pos += last as u64 + 1;
    }
    Ok(None)
}

/// Whether a whole version 1 record verifies at `p` (`window` holds the file from `p` on, at
/// least its 8-byte frame header).
fn v1_candidate(
    file: &File,
    file_len: u64,
    p: u64,
    window: &[u8],
    payload: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let len = u32_at(window, 0) as usize;
    if !(4..=MAX_RECORD_BYTES).contains(&len) || len as u64 > file_len - p - 8 {
        return Ok(false);
    }
    // The record header's length, the payload's first word: cheap to check before reading more.
    let header_len = if window.len() >= 12 {
        u32_at(window, 8) as usize
    } else {
        let mut w = [0u8; 4];
        file.read_exact_at(&mut w, p + 8)?;
        u32::from_le_bytes(w) as usize
    };
    if header_len > (len - 4).min(MAX_RECORD_HEADER_BYTES) {
        return Ok(false);
    }
    payload.resize(len, 0);
    file.read_exact_at(payload, p + 8)?;
    Ok(crc32fast::hash(payload) == u32_at(window, 4) && split_payload(payload).is_ok())
}

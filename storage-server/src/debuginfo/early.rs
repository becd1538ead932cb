//! An upload's build ID checked while its body streams in, so that a file uploaded under another
//! build ID is refused (400) as soon as its note has arrived, not after the whole body (up to the
//! upload limit) was received, spooled and decompressed.
//!
//! The body is decompressed here only as far as the note needs: [`kiln_buildid::StreamScan`]
//! decides from the file's first bytes (usually its first page) or gives up after
//! [`kiln_buildid::MAX_PREFIX_BYTES`], and from then on chunks pass through untouched. This runs on
//! the request's task, so that work is bounded by that prefix. Whatever this cannot decide (no
//! note in a `PT_NOTE` segment, a body that does not decompress) is left to the check of the
//! complete file in the store, which stays the authoritative one.

use kiln_buildid::{StreamScan, Streamed};
use kiln_symbolizer::BuildId;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::http::ZSTD_MAGIC;

/// How the body is being read.
enum Body {
    /// Not yet known (no `Content-Encoding`): the first bytes tell zstd from a plain ELF.
    Sniffing(Vec<u8>),
    Plain,
    Zstd(Box<Decoder<'static>>),
    /// Decided, or nothing more to learn: chunks are not looked at any more.
    Done,
}

/// Bytes decompressed at a time.
const OUT_CHUNK: usize = 64 << 10;

/// See the module documentation.
pub struct EarlyCheck {
    expected: BuildId,
    body: Body,
    scan: StreamScan,
    /// Body bytes received, for the message.
    received: u64,
}

impl EarlyCheck {
    /// A check of a body declared zstd (`Content-Encoding: zstd`) or to be sniffed.
    pub fn new(expected: &BuildId, declared_zstd: bool) -> Self {
        EarlyCheck {
            expected: expected.clone(),
            body: if declared_zstd {
                zstd_decoder()
            } else {
                Body::Sniffing(Vec::with_capacity(ZSTD_MAGIC.len()))
            },
            scan: StreamScan::new(),
            received: 0,
        }
    }

    /// Takes the next chunk of the body as received. `Err` with the message for the client when
    /// the file's build ID is seen and is not the expected one.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.received += chunk.len() as u64;
        if let Body::Sniffing(head) = &mut self.body {
            let take = (ZSTD_MAGIC.len() - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() < ZSTD_MAGIC.len() {
                return Ok(());
            }
            let head = std::mem::take(head);
            self.body = if head == ZSTD_MAGIC {
                zstd_decoder()
            } else {
                Body::Plain
            };
            // The sniffed bytes are part of the body: feed them first.
            self.pass(&head)?;
            return self.pass(&chunk[take..]);
        }
        self.pass(chunk)
    }

    fn pass(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.body {
            Body::Sniffing(_) | Body::Done => Ok(()),
            Body::Plain => {
                self.scan.feed(bytes);
                self.judge()
            }
            Body::Zstd(decoder) => {
                let mut input = InBuffer::around(bytes);
                let mut out = vec![0u8; OUT_CHUNK];
                loop {
                    let before = input.pos();
                    let mut output = OutBuffer::around(&mut out[..]);
                    if decoder.run(&mut input, &mut output).is_err() {
                        // Not zstd after all: the store's decompression says so, with a 400.
                        self.body = Body::Done;
                        return Ok(());
                    }
                    let produced = output.pos();
                    self.scan.feed(&out[..produced]);
                    if *self.scan.verdict() != Streamed::Pending {
                        return self.judge();
                    }
                    // All input taken and the decoder had no more to give (or, defensively,
                    // neither input taken nor output given).
                    let stalled = produced == 0 && input.pos() == before;
                    if stalled || (input.pos() == bytes.len() && produced < out.len()) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Compares a decided identity with the expected one.
    fn judge(&mut self) -> Result<(), String> {
        let found = match self.scan.verdict() {
            Streamed::Pending => return Ok(()),
            Streamed::Undecided => None,
            Streamed::Identity(id) => Some(id.clone()),
        };
        self.body = Body::Done;
        let Some(found) = found else {
            return Ok(());
        };
        let found: String = found.iter().map(|b| format!("{b:02x}")).collect();
        if found == self.expected.as_str() {
            return Ok(());
        }
        Err(format!(
            "build ID mismatch: the URL names {}, the file's build ID note says {found} (seen in the \
             first {} bytes of the upload, which was refused there)",
            self.expected, self.received
        ))
    }
}

fn zstd_decoder() -> Body {
    match Decoder::new() {
        Ok(d) => Body::Zstd(Box::new(d)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a zstd decoder; build ID checked at the end");
            Body::Done
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object::Object;

    fn own_exe() -> (Vec<u8>, BuildId) {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let id = object::File::parse(&*exe)
            .unwrap()
            .build_id()
            .unwrap()
            .unwrap()
            .to_vec();
        (exe, BuildId::from_bytes(&id).unwrap())
    }

    /// Feeds `body` in 16 KiB chunks; the bytes fed when refused, or `None`.
    fn refused_after(check: &mut EarlyCheck, body: &[u8]) -> Option<usize> {
        let mut fed = 0;
        for chunk in body.chunks(16 << 10) {
            fed += chunk.len();
            if check.feed(chunk).is_err() {
                return Some(fed);
            }
        }
        None
    }

    #[test]
    fn a_wrong_build_id_is_refused_in_the_first_chunks_plain_or_zstd() {
        let (exe, id) = own_exe();
        let other = BuildId::parse("00112233445566778899aabbccddeeff00112233").unwrap();
        // The first 2 MiB are enough (the notes are in the first page) and quick to compress.
        let exe = exe[..exe.len().min(2 << 20)].to_vec();
        let zst = zstd::bulk::compress(&exe, 1).unwrap();
        for (body, zstd_declared, what) in [
            (&exe, false, "plain"),
            (&zst, false, "zstd, sniffed"),
            (&zst, true, "zstd, declared"),
        ] {
            let at = refused_after(&mut EarlyCheck::new(&other, zstd_declared), body)
                .unwrap_or_else(|| panic!("{what}: not refused"));
            assert!(at <= 32 << 10, "{what}: refused only after {at} bytes");
            assert!(body.len() > 8 * at, "{what}: the body is much longer");
            // The right build ID passes, to the end.
            assert_eq!(
                refused_after(&mut EarlyCheck::new(&id, zstd_declared), body),
                None,
                "{what}"
            );
        }
    }

    #[test]
    fn what_it_cannot_read_is_left_to_the_final_check() {
        let other = BuildId::parse("0011").unwrap();
        let mut c = EarlyCheck::new(&other, true);
        assert!(c.feed(b"not zstd at all, and not an ELF either").is_ok());
        let mut c = EarlyCheck::new(&other, false);
        assert!(c.feed(b"#!/bin/sh\necho hi\n").is_ok());
        assert!(c.feed(&[0u8; 1 << 16]).is_ok());
    }
}

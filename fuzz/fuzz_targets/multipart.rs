//! The `/ingest` multipart reader on any bytes, two ways. As a body: never a panic, at most 16
//! parts, each part's data a slice of the body, in order and not overlapping. As fields: a form
//! written from fuzz-chosen fields (names and data) parses back to exactly those fields whenever
//! the data cannot contain the delimiter.
#![no_main]

use kiln_storage_server::ingest::multipart::{boundary, parse};
use libfuzzer_sys::fuzz_target;

const BOUNDARY: &str = "Xy7-boundary";

fn form(fields: &[(String, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, data) in fields {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        b.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"f\"\r\n")
                .as_bytes(),
        );
        b.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    // 1. Any bytes as a body, the first line as the Content-Type.
    let (ct, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let ct = String::from_utf8_lossy(ct);
    let b = match boundary(&format!("multipart/form-data; {ct}")) {
        Some(Ok(b)) => b,
        _ => BOUNDARY.to_owned(),
    };
    if let Ok(parts) = parse(body, &b) {
        assert!(parts.len() <= 16);
        let range = body.as_ptr_range();
        let mut end = range.start;
        for p in &parts {
            let r = p.data.as_ptr_range();
            assert!(
                r.start >= end && r.end <= range.end,
                "parts out of order or outside"
            );
            end = r.end;
        }
    }

    // 2. Fields separated by 0xff bytes, each `name\0data`: write a form, read it back.
    let fields: Vec<(String, &[u8])> = data
        .split(|&b| b == 0xff)
        .take(16)
        .map(|f| match f.iter().position(|&b| b == 0) {
            Some(i) => (&f[..i], &f[i + 1..]),
            None => (&f[..0], f),
        })
        .map(|(name, data)| {
            // Names as clients write them: no quotes, separators or line breaks.
            let name: String = String::from_utf8_lossy(name)
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (name, data)
        })
        .collect();
    let delim = format!("\r\n--{BOUNDARY}");
    // (The delimiter does not overlap itself, so only data containing it whole is ambiguous.)
    let ambiguous = fields
        .iter()
        .any(|(_, d)| d.windows(delim.len()).any(|w| w == delim.as_bytes()));
    if ambiguous {
        return;
    }
    let body = form(&fields);
    let parts = parse(&body, BOUNDARY).expect("a written form parses");
    assert_eq!(parts.len(), fields.len());
    for (p, (name, data)) in parts.iter().zip(&fields) {
        assert_eq!(&p.name, name);
        assert_eq!(p.data, *data);
    }
});

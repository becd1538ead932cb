//! A small, strict `multipart/form-data` reader for `/ingest` uploads (fields `profile`,
//! `sample_type_config`, `prev_profile`). The body is already in memory and size-limited, so parts
//! are borrowed slices of it: parsing allocates only the part list.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("multipart Content-Type has no boundary parameter")]
    NoBoundary,
    #[error("multipart body does not start with the boundary")]
    NoStart,
    #[error("multipart body is truncated: no closing boundary")]
    Truncated,
    #[error("multipart part {0} has malformed headers")]
    BadHeaders(usize),
    #[error("multipart part {0} has no Content-Disposition name")]
    NoName(usize),
    #[error("multipart body has more than {0} parts")]
    TooManyParts(usize),
}

/// Forms from real clients have two or three parts; this bounds the work on hostile ones.
const MAX_PARTS: usize = 16;

/// One form field.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub data: &'a [u8],
}

/// The boundary from a `multipart/form-data; boundary=…` content type, or `None` when the type
/// is not multipart.
pub fn boundary(content_type: &str) -> Option<Result<String, MultipartError>> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for p in params {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("boundary")
        {
            let v = v.trim().trim_matches('"');
            if !v.is_empty() && v.len() <= 70 {
                return Some(Ok(v.to_owned()));
            }
        }
    }
    Some(Err(MultipartError::NoBoundary))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        match haystack[i..].iter().position(|&b| b == first) {
            None => return None,
            Some(off) => {
                let at = i + off;
                if haystack.get(at..at + needle.len()) == Some(needle) {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// Splits `body` into its parts.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, MultipartError> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // A preamble before the first boundary is allowed by RFC 2046 but nobody sends one.
    let mut pos = match find(body, delim, 0) {
        Some(0) => delim.len(),
        Some(i) if body[..i].ends_with(b"\r\n") => i + delim.len(),
        _ => return Err(MultipartError::NoStart),
    };
    let inner = [b"\r\n".as_slice(), delim].concat();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts(MAX_PARTS));
        }
        let index = parts.len();
        // Skip transport padding and the CRLF after the boundary.
        let start = find(body, b"\r\n", pos).ok_or(MultipartError::Truncated)? + 2;
        let (headers, data_start) = if body[start..].starts_with(b"\r\n") {
            (&body[start..start], start + 2)
        } else {
            let end = find(body, b"\r\n\r\n", start).ok_or(MultipartError::BadHeaders(index))?;
            (&body[start..end], end + 4)
        };
        let headers =
            std::str::from_utf8(headers).map_err(|_| MultipartError::BadHeaders(index))?;
        let name = part_name(headers).ok_or(MultipartError::NoName(index))?;
        let data_end = find(body, &inner, data_start).ok_or(MultipartError::Truncated)?;
        parts.push(Part {
            name,
            data: &body[data_start..data_end],
        });
        pos = data_end + inner.len();
    }
}

/// `name` from `Content-Disposition: form-data; name="profile"; filename="profile.pprof"`.
fn part_name(headers: &str) -> Option<String> {
    for line in headers.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        for p in v.split(';').skip(1) {
            if let Some((pk, pv)) = p.split_once('=')
                && pk.trim().eq_ignore_ascii_case("name")
            {
                return Some(pv.trim().trim_matches('"').to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, data) in parts {
            b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(
                b"\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            );
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn boundaries() {
        assert_eq!(boundary("application/octet-stream"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\""),
            Some(Ok("XyZ".into()))
        );
        assert_eq!(
            boundary("Multipart/Form-Data;boundary=abc"),
            Some(Ok("abc".into()))
        );
        assert_eq!(
            boundary("multipart/form-data"),
            Some(Err(MultipartError::NoBoundary))
        );
    }

    #[test]
    fn parts_split() {
        let body = form(&[
            ("profile", b"\x00\r\n--Xy binary"),
            ("sample_type_config", b"{}"),
        ]);
        let parts = parse(&body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "profile");
        assert_eq!(parts[0].data, b"\x00\r\n--Xy binary");
        assert_eq!(parts[1].name, "sample_type_config");
        assert_eq!(parts[1].data, b"{}");
        assert_eq!(parse(&form(&[]), "XyZ").unwrap(), vec![]);
    }

    #[test]
    fn malformed_rejected() {
        let body = form(&[("profile", b"data")]);
        assert_eq!(parse(&body, "other"), Err(MultipartError::NoStart));
        assert_eq!(
            parse(&body[..body.len() - 12], "XyZ"),
            Err(MultipartError::Truncated)
        );
        let no_name = b"--XyZ\r\nContent-Type: x\r\n\r\ndata\r\n--XyZ--".to_vec();
        assert_eq!(parse(&no_name, "XyZ"), Err(MultipartError::NoName(0)));
        let many: Vec<(&str, &[u8])> = (0..20).map(|_| ("p", b"x".as_slice())).collect();
        assert_eq!(
            parse(&form(&many), "XyZ"),
            Err(MultipartError::TooManyParts(MAX_PARTS))
        );
        assert!(parse(b"", "XyZ").is_err());
        assert!(parse(b"--XyZ", "XyZ").is_err());
    }
}

//! The `multipart/mixed` answer of the federation media endpoints
//! (server-server "Content Repository", `GET /_matrix/federation/v1/media/
//! download/{mediaId}`): a first part of JSON metadata (empty for now), a
//! second part that is either the content, with its `Content-Type` and
//! `Content-Disposition`, or a `Location` header to fetch it from.
//! Pure code: built and parsed here, sent and fetched elsewhere.

use bytes::Bytes;

/// The second part of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Content {
        bytes: Bytes,
        content_type: Option<String>,
        disposition: Option<String>,
    },
    /// The content is at this URL (to be fetched without our signature).
    Location(String),
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed multipart answer: {0}")]
pub struct MultipartError(pub &'static str);

/// The boundary of a `multipart/mixed; boundary=…` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 70).then(|| v.to_owned())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// Parses an answer with `boundary`: the second part (the first, JSON, is
/// metadata we do not use yet).
pub fn parse(body: &Bytes, boundary: &str) -> Result<Part, MultipartError> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // Every part starts after a delimiter line and ends at CRLF + the next.
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(i) = find(body, delim, at) {
        starts.push(i);
        at = i + delim.len();
    }
    if starts.len() < 3 {
        return Err(MultipartError("expected two parts"));
    }
    let part_start = starts[1] + delim.len();
    let part_end = starts[2];
    let part = body.slice(part_start..part_end);
    let part = part
        .strip_prefix(b"\r\n")
        .map(|_| part.slice(2..))
        .ok_or(MultipartError("no line break after the delimiter"))?;
    let head_end = find(&part, b"\r\n\r\n", 0)
        .map(|i| (i, i + 4))
        .or_else(|| part.starts_with(b"\r\n").then_some((0, 2)))
        .ok_or(MultipartError("part headers do not end"))?;
    let head = std::str::from_utf8(&part[..head_end.0])
        .map_err(|_| MultipartError("part headers are not UTF-8"))?;
    let mut content_type = None;
    let mut disposition = None;
    let mut location = None;
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or(MultipartError("bad part header"))?;
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(v),
            "content-disposition" => disposition = Some(v),
            "location" => location = Some(v),
            _ => {}
        }
    }
    if let Some(l) = location {
        return Ok(Part::Location(l));
    }
    // The CRLF before the next delimiter belongs to the delimiter.
    let mut content = part.slice(head_end.1..);
    if content.ends_with(b"\r\n") {
        content = content.slice(..content.len() - 2);
    }
    Ok(Part::Content {
        bytes: content,
        content_type,
        disposition,
    })
}

/// An answer carrying `bytes` (what hearth serves to other servers).
pub fn build(
    boundary: &str,
    bytes: &[u8],
    content_type: &str,
    disposition: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 256);
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n")
            .as_bytes(),
    );
    out.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    if let Some(d) = disposition {
        out.extend_from_slice(format!("Content-Disposition: {d}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let body = Bytes::from(build(
            "b0und",
            b"\r\n--b0un binary\r\n",
            "image/png",
            Some("inline; filename=\"a.png\""),
        ));
        assert_eq!(
            parse(&body, "b0und").unwrap(),
            Part::Content {
                bytes: Bytes::from_static(b"\r\n--b0un binary\r\n"),
                content_type: Some("image/png".into()),
                disposition: Some("inline; filename=\"a.png\"".into()),
            }
        );
    }

    #[test]
    fn location_and_boundary() {
        let body = Bytes::from_static(
            b"--x\r\nContent-Type: application/json\r\n\r\n{}\r\n--x\r\n\
              Location: https://cdn.example/abc\r\n\r\n\r\n--x--\r\n",
        );
        assert_eq!(
            parse(&body, "x").unwrap(),
            Part::Location("https://cdn.example/abc".into())
        );
        assert_eq!(
            boundary("multipart/mixed; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary("application/json"), None);
        assert!(parse(&Bytes::from_static(b"--x\r\n{}"), "x").is_err());
        // Empty content.
        let body = Bytes::from(build("q", b"", "text/plain", None));
        assert!(matches!(parse(&body, "q"), Ok(Part::Content { bytes, .. }) if bytes.is_empty()));
    }
}

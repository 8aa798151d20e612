//! Headers that make serving user-uploaded bytes safe (spec "Content
//! repository" → "Serving inline content" and the recommended
//! `Content-Security-Policy`; Synapse's `add_file_headers`).
//!
//! Only types on the spec's list are `inline`; everything else, HTML and
//! SVG above all, is an `attachment`, so a browser never renders uploaded
//! script on our origin. `nosniff` stops it from guessing its way back to
//! HTML.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The policy Synapse sends (the spec's recommendation plus `media-src`).
pub const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; \
plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// The spec's list of types safe to serve `inline`.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Whether `content_type` (parameters such as `charset` ignored) may be
/// served inline.
pub fn inline_safe(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    INLINE_TYPES.iter().any(|t| t.eq_ignore_ascii_case(essence))
}

/// RFC 5987 `attr-char`: what may stay unencoded in `filename*`.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `Content-Disposition` for `content_type`, naming `filename` if given
/// (RFC 6266): a quoted `filename="…"` for plain printable ASCII, else
/// `filename*=utf-8''…` percent-encoded, so no name can break the header.
pub fn content_disposition(content_type: &str, filename: Option<&str>) -> String {
    let kind = if inline_safe(content_type) {
        "inline"
    } else {
        "attachment"
    };
    match filename.filter(|f| !f.is_empty()) {
        None => kind.to_owned(),
        Some(f)
            if f.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') =>
        {
            format!("{kind}; filename=\"{f}\"")
        }
        Some(f) => format!(
            "{kind}; filename*=utf-8''{}",
            utf8_percent_encode(f, ATTR_CHAR)
        ),
    }
}

/// A `Content-Type` as uploaded, if it is one we can send back verbatim:
/// printable ASCII of sane length (`type/subtype[; params]`).
pub fn sanitize_content_type(raw: Option<&str>) -> Option<String> {
    let raw = raw?.trim();
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw.contains('/')
        && raw.bytes().all(|b| (0x20..0x7f).contains(&b));
    ok.then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_only_for_the_spec_list() {
        assert!(inline_safe("image/png"));
        assert!(inline_safe("text/plain; charset=utf-8"));
        assert!(inline_safe("IMAGE/JPEG"));
        for t in [
            "text/html",
            "image/svg+xml",
            "application/octet-stream",
            "",
            "text/html; x=text/plain",
        ] {
            assert!(!inline_safe(t), "{t}");
        }
    }

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition("image/png", None), "inline");
        assert_eq!(
            content_disposition("image/png", Some("cat.png")),
            "inline; filename=\"cat.png\""
        );
        assert_eq!(
            content_disposition("text/html", Some("x.html")),
            "attachment; filename=\"x.html\""
        );
        assert_eq!(
            content_disposition("application/pdf", Some("a\"b\r\n.pdf")),
            "attachment; filename*=utf-8''a%22b%0D%0A.pdf"
        );
        assert_eq!(
            content_disposition("text/plain", Some("résumé.txt")),
            "inline; filename*=utf-8''r%C3%A9sum%C3%A9.txt"
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            sanitize_content_type(Some(" image/png ")).as_deref(),
            Some("image/png")
        );
        assert_eq!(sanitize_content_type(Some("nonsense")), None);
        assert_eq!(sanitize_content_type(Some("text/plain\u{7f}")), None);
        assert_eq!(sanitize_content_type(None), None);
    }
}

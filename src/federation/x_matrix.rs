//! The `X-Matrix` authorization scheme (server-server-api "Request
//! Authentication"): building it for outbound requests, parsing it from
//! inbound ones (never panicking, whatever the bytes), and the JSON both
//! sides sign.

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::serde::{base64::Standard, Base64};
use ruma::signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes};

use crate::events::ServerKey;

/// The parameters of one `Authorization: X-Matrix ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    pub origin: String,
    /// Absent from servers older than spec v1.3; checked when present.
    pub destination: Option<String>,
    pub key: String,
    pub sig: String,
}

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not the X-Matrix scheme")]
    Scheme,
    #[error("malformed parameter list")]
    Syntax,
    #[error("missing parameter {0}")]
    Missing(&'static str),
}

/// Header values bigger than this are refused outright (the HTTP layer
/// bounds heads too; this bounds the parser's own work).
const MAX_HEADER_LEN: usize = 8 * 1024;

impl XMatrix {
    /// Parses a header value (RFC 9110 §11.4 credentials: the scheme, one or
    /// more spaces, then `name=value` pairs separated by commas with
    /// optional whitespace; values are tokens or quoted strings with
    /// backslash escapes; names are case-insensitive; unknown names are
    /// ignored). Colons are accepted in unquoted values, as the spec asks
    /// for compatibility with older servers.
    pub fn parse(value: &[u8]) -> Result<XMatrix, ParseError> {
        if value.len() > MAX_HEADER_LEN {
            return Err(ParseError::Syntax);
        }
        let s = std::str::from_utf8(value).map_err(|_| ParseError::Syntax)?;
        let s = s.trim_matches(|c| c == ' ' || c == '\t');
        let (scheme, rest) = s.split_once([' ', '\t']).ok_or(ParseError::Scheme)?;
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return Err(ParseError::Scheme);
        }
        let (mut origin, mut destination, mut key, mut sig) = (None, None, None, None);
        let mut p = Params {
            s: rest.as_bytes(),
            i: 0,
        };
        loop {
            p.skip_ws_and_commas();
            if p.done() {
                break;
            }
            let (name, value) = p.pair()?;
            let slot = match name.to_ascii_lowercase().as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key,
                "sig" => &mut sig,
                _ => continue,
            };
            if slot.is_some() {
                // A repeated parameter is ambiguous: refuse rather than guess.
                return Err(ParseError::Syntax);
            }
            *slot = Some(value);
            p.skip_ws();
            if !p.done() && !p.eat(b',') {
                return Err(ParseError::Syntax);
            }
        }
        Ok(XMatrix {
            origin: origin.ok_or(ParseError::Missing("origin"))?,
            destination,
            key: key.ok_or(ParseError::Missing("key"))?,
            sig: sig.ok_or(ParseError::Missing("sig"))?,
        })
    }

    /// The header value we send: lower-case names, quoted values, one
    /// space after the scheme, no spaces around commas (the spec's advice
    /// for compatibility with older servers).
    pub fn to_header(&self) -> String {
        let mut out = format!("X-Matrix origin={}", quote(&self.origin));
        if let Some(d) = &self.destination {
            out.push_str(",destination=");
            out.push_str(&quote(d));
        }
        out.push_str(",key=");
        out.push_str(&quote(&self.key));
        out.push_str(",sig=");
        out.push_str(&quote(&self.sig));
        out
    }
}

fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

struct Params<'a> {
    s: &'a [u8],
    i: usize,
}

impl Params<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    /// `name=value`, the value a token (colons allowed) or a quoted string.
    fn pair(&mut self) -> Result<(String, String), ParseError> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        if self.i == start {
            return Err(ParseError::Syntax);
        }
        let name = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.skip_ws();
        if !self.eat(b'=') {
            return Err(ParseError::Syntax);
        }
        self.skip_ws();
        if self.eat(b'"') {
            let mut v = Vec::new();
            loop {
                match self.peek() {
                    None => return Err(ParseError::Syntax),
                    Some(b'"') => {
                        self.i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        self.i += 1;
                        let c = self.peek().ok_or(ParseError::Syntax)?;
                        v.push(c);
                        self.i += 1;
                    }
                    Some(c) => {
                        v.push(c);
                        self.i += 1;
                    }
                }
            }
            // The input was UTF-8 and escapes only drop backslashes, but an
            // escaped byte of a multi-byte character could split it: check.
            let v = String::from_utf8(v).map_err(|_| ParseError::Syntax)?;
            Ok((name, v))
        } else {
            let start = self.i;
            while self.peek().is_some_and(|c| is_tchar(c) || c == b':') {
                self.i += 1;
            }
            if self.i == start {
                return Err(ParseError::Syntax);
            }
            Ok((
                name,
                String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
            ))
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The JSON object a request's signature covers (spec step 1): `content`
/// only when there is a body.
pub fn request_json(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut obj = CanonicalJsonObject::from([
        (
            "method".to_owned(),
            CanonicalJsonValue::String(method.to_owned()),
        ),
        ("uri".to_owned(), CanonicalJsonValue::String(uri.to_owned())),
        (
            "origin".to_owned(),
            CanonicalJsonValue::String(origin.to_owned()),
        ),
        (
            "destination".to_owned(),
            CanonicalJsonValue::String(destination.to_owned()),
        ),
    ]);
    if let Some(c) = content {
        obj.insert("content".to_owned(), c);
    }
    obj
}

/// Signs a request as `key`'s server for `destination`: the header value.
pub fn sign_request(
    key: &ServerKey,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<CanonicalJsonValue>,
) -> Result<String, crate::events::KeyError> {
    let origin = key.server_name.as_str();
    let mut obj = request_json(method, uri, origin, destination, content);
    key.sign_json(&mut obj)?;
    let sig = obj
        .get("signatures")
        .and_then(|s| match s {
            CanonicalJsonValue::Object(o) => o.get(origin),
            _ => None,
        })
        .and_then(|s| match s {
            CanonicalJsonValue::Object(o) => o.get(key.key_id.as_str()),
            _ => None,
        })
        .and_then(|s| match s {
            CanonicalJsonValue::String(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Ok(XMatrix {
        origin: origin.to_owned(),
        destination: Some(destination.to_owned()),
        key: key.key_id.to_string(),
        sig,
    }
    .to_header())
}

/// Checks `sig` over `object` (without `signatures`/`unsigned`) with the
/// ed25519 public key `public_key`.
pub fn verify_signature(object: &CanonicalJsonObject, public_key: &[u8], sig_b64: &str) -> bool {
    let Ok(sig) = Base64::<Standard, Vec<u8>>::parse(sig_b64) else {
        return false;
    };
    let Ok(canonical) = to_canonical_json_string_for_signing(object) else {
        return false;
    };
    verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        public_key,
        sig.as_bytes(),
        canonical.as_bytes(),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_spec_example_and_variants() {
        let h = br#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#;
        let x = XMatrix::parse(h).unwrap();
        assert_eq!(x.origin, "origin.hs.example.com");
        assert_eq!(x.destination.as_deref(), Some("destination.hs.example.com"));
        assert_eq!(x.key, "ed25519:key1");
        assert_eq!(x.sig, "ABCDEF...");

        // Unquoted values with colons, spaces around commas, odd case,
        // unknown params, escapes.
        let h = b"x-matrix   Origin=a.org:8448 ,\tKEY=ed25519:k , extra=1, sig=\"a\\\"b\"";
        let x = XMatrix::parse(h).unwrap();
        assert_eq!(x.origin, "a.org:8448");
        assert_eq!(x.destination, None);
        assert_eq!(x.key, "ed25519:k");
        assert_eq!(x.sig, "a\"b");
    }

    #[test]
    fn refuses_bad_headers() {
        for h in [
            &b""[..],
            b"Bearer abc",
            b"X-Matrix",
            b"X-Matrixorigin=a",
            b"X-Matrix origin=a,key=k",
            b"X-Matrix origin=\"a,key=k,sig=s",
            b"X-Matrix origin=a,origin=b,key=k,sig=s",
            b"X-Matrix origin=a key=k sig=s",
            b"X-Matrix =a,key=k,sig=s",
            b"X-Matrix origin=,key=k,sig=s",
            b"X-Matrix origin=a,key=k,sig=\\",
            b"\xff\xfe",
        ] {
            assert!(
                XMatrix::parse(h).is_err(),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn header_round_trips() {
        let x = XMatrix {
            origin: "a.org:1".into(),
            destination: Some("b.org".into()),
            key: "ed25519:a_1".into(),
            sig: "s/ig+".into(),
        };
        assert_eq!(XMatrix::parse(x.to_header().as_bytes()).unwrap(), x);
    }

    #[test]
    fn signed_request_verifies() {
        let key = crate::events::signing_key::tests::spec_key();
        let content: CanonicalJsonValue = serde_json::from_str(r#"{"a":1}"#).unwrap();
        let header = sign_request(
            &key,
            "dest.org",
            "PUT",
            "/_matrix/x?y=1",
            Some(content.clone()),
        )
        .unwrap();
        let x = XMatrix::parse(header.as_bytes()).unwrap();
        assert_eq!(x.origin, "domain");
        let obj = request_json("PUT", "/_matrix/x?y=1", "domain", "dest.org", Some(content));
        let pk = key.keypair.public_key();
        assert!(verify_signature(&obj, &pk, &x.sig));
        let other = request_json("PUT", "/_matrix/x?y=2", "domain", "dest.org", None);
        assert!(!verify_signature(&other, &pk, &x.sig));
        assert!(!verify_signature(&obj, &pk, "not base64!"));
        assert!(!verify_signature(&obj, &[0u8; 3], &x.sig));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = XMatrix::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_near_valid(
            a in "[ -~]{0,40}", b in "[ -~]{0,40}", c in "[ -~]{0,40}", sep in "[ ,\t\"\\\\=]{0,4}"
        ) {
            let h = format!("X-Matrix origin={a}{sep},key=\"{b}\"{sep}sig={c}");
            let _ = XMatrix::parse(h.as_bytes());
        }

        #[test]
        fn quoted_values_round_trip(origin in "\\PC{1,30}", sig in "\\PC{1,30}") {
            let x = XMatrix { origin, destination: None, key: "ed25519:k".into(), sig };
            prop_assert_eq!(XMatrix::parse(x.to_header().as_bytes()).unwrap(), x);
        }
    }
}

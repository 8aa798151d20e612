//! Random identifiers: access tokens, device ids, UIA session ids.

use super::AuthError;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters drawn uniformly from `alphabet` (rejection sampling, so
/// no modulo bias).
pub fn random_string(alphabet: &[u8], len: usize) -> Result<String, AuthError> {
    let n = alphabet.len();
    debug_assert!(n > 0 && n <= 256);
    let limit = 256 - (256 % n); // bytes >= limit would bias the result
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)
            .map_err(|e| AuthError::Internal(format!("no randomness: {e}")))?;
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % n] as char);
            }
        }
    }
    Ok(out)
}

/// An access token: `hth_` plus 43 alphanumerics (≈ 256 bits).
pub fn new_access_token() -> Result<String, AuthError> {
    Ok(format!("hth_{}", random_string(ALNUM, 43)?))
}

/// What the database and the caches hold of an access token: its SHA-256,
/// hex. A read of the table (a backup, a leaked dump) gives no usable
/// token; the token has ≈ 256 bits, so an unsalted fast hash is enough.
pub fn hash_token(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// A device id: 10 upper-case letters, as Synapse makes them.
pub fn new_device_id() -> Result<String, AuthError> {
    random_string(UPPER, 10)
}

/// A UIA session id (≈ 190 bits).
pub fn new_session_id() -> Result<String, AuthError> {
    random_string(ALNUM, 32)
}

/// A localpart for `/register` without a username: lower-case letters and
/// digits, starting with a letter (all-digit localparts are for guests).
pub fn new_localpart() -> Result<String, AuthError> {
    Ok(format!("u{}", random_string(LOWER_ALNUM, 11)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_uniqueness() {
        let t = new_access_token().unwrap();
        assert_eq!(t.len(), 47);
        assert!(t[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(t, new_access_token().unwrap());
        // The spec's SHA-256 test vector; and the hash never equals the token.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_token(&t), t);
        let d = new_device_id().unwrap();
        assert!(d.len() == 10 && d.bytes().all(|b| b.is_ascii_uppercase()));
        let l = new_localpart().unwrap();
        assert!(super::super::username::validate_localpart(&l, "example.org").is_ok());
    }
}

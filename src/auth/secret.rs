//! Comparing secrets (registration tokens, shared secrets): the one helper
//! every comparison of a client-supplied secret with ours goes through.
//!
//! Both sides are hashed first (SHA-256) and the digests compared without
//! an early exit, so neither where the inputs differ nor the length of our
//! secret shows in the time taken. Access, login and OpenID tokens are
//! never compared: they are looked up by their hash (`tokens::hash_token`).

use sha2::{Digest, Sha256};

/// Whether `given` equals `ours`, in time independent of their contents.
pub fn secrets_equal(given: &[u8], ours: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(ours);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold into an
    // early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_and_unequal() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"ab"));
        assert!(!secrets_equal(b"", b"a"));
        assert!(secrets_equal(b"", b""));
    }
}

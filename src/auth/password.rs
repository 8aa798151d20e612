//! Password hashing with argon2 (PHC strings, e.g. `$argon2id$v=19$...`),
//! always on the blocking pool: a hash costs tens of milliseconds of CPU and
//! must never stall a shard.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::AuthError;
use crate::blocking;

/// Passwords longer than this are refused (Synapse's limit): hashing cost
/// must not be the client's to choose.
pub const MAX_PASSWORD_LEN: usize = 512;

/// Hash synchronously. For the CLI and the pool threads; never on a shard.
pub fn hash_blocking(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Internal(format!("no randomness: {e}")))?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| AuthError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("hashing: {e}")))
}

/// Verify synchronously; a malformed stored hash verifies nothing.
pub fn verify_blocking(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Check a new password's size (spec leaves policy to the server).
pub fn check_new_password(password: &str) -> Result<(), AuthError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AuthError::BadRequest("Password too long".into()));
    }
    Ok(())
}

/// Hash on the blocking pool.
pub async fn hash(password: String) -> Result<String, AuthError> {
    check_new_password(&password)?;
    blocking::run(move || hash_blocking(&password)).await?
}

/// Verify on the blocking pool.
pub async fn verify(password: String, phc: String) -> Result<bool, AuthError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Ok(false);
    }
    Ok(blocking::run(move || verify_blocking(&password, &phc)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_blocking("correct horse", &h));
        assert!(!verify_blocking("wrong", &h));
        assert!(!verify_blocking("correct horse", "not a phc string"));
        // Salted: the same password hashes differently.
        assert_ne!(h, hash_blocking("correct horse").unwrap());
    }

    #[test]
    fn async_hash_runs_on_the_pool() {
        let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build();
        rt.unwrap().block_on(async {
            let h = hash("pw".into()).await.unwrap();
            assert!(verify("pw".into(), h.clone()).await.unwrap());
            assert!(!verify("nope".into(), h).await.unwrap());
            assert!(hash("x".repeat(MAX_PASSWORD_LEN + 1)).await.is_err());
        });
    }
}

//! Retired signing keys (`old_verify_keys` of `/_matrix/key/v2/server`):
//! after a rotation peers still need the old public key to check events it
//! signed. Kept in `data_dir/old_signing_keys`, one line per key:
//! `ed25519:<version> <unpadded base64 public key> <expired_ts>`.
//!
//! Synchronous IO on purpose, like `signing_key`: it runs on the main
//! thread before shards start, or from the CLI.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::signing_key::{KeyError, ServerKey, KEY_FILE_NAME};

pub const OLD_KEYS_FILE_NAME: &str = "old_signing_keys";

/// One retired key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldVerifyKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64.
    pub key: String,
    /// When it stopped being used (ms since the epoch).
    pub expired_ts: u64,
}

/// Reads the retired keys; a missing file is none. Malformed lines are
/// an error naming the file (a silently dropped key would make peers
/// reject old events).
pub fn load(data_dir: &Path) -> Result<Vec<OldVerifyKey>, KeyError> {
    let path = data_dir.join(OLD_KEYS_FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(KeyError::Io { path, source }),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: &str| KeyError::Malformed {
            path: path.clone(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [key_id, key, expired] = parts.as_slice() else {
            return Err(bad("expected `ed25519:<version> <key> <expired_ts>`"));
        };
        if !key_id.starts_with("ed25519:") {
            return Err(bad("key id must start with ed25519:"));
        }
        let expired_ts = expired.parse().map_err(|_| bad("bad expired_ts"))?;
        out.push(OldVerifyKey {
            key_id: (*key_id).to_owned(),
            key: (*key).to_owned(),
            expired_ts,
        });
    }
    Ok(out)
}

/// Retires the current key (its public half goes to `old_signing_keys`
/// with `expired_ts = now_ms`) and creates a new one with a fresh random
/// key id. Returns the new key. hearth must not be running.
pub fn rotate(data_dir: &Path, server_name: &str, now_ms: u64) -> Result<ServerKey, KeyError> {
    let current = ServerKey::load_or_create(data_dir, server_name)?;
    let path = data_dir.join(OLD_KEYS_FILE_NAME);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    writeln!(
        f,
        "{} {} {now_ms}",
        current.key_id,
        current.public_key_base64()
    )
    .map_err(io)?;
    f.sync_all().map_err(io)?;
    let key_path = data_dir.join(KEY_FILE_NAME);
    fs::remove_file(&key_path).map_err(|source| KeyError::Io {
        path: key_path,
        source,
    })?;
    ServerKey::load_or_create(data_dir, server_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_old_public_key_and_picks_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerKey::load_or_create(dir.path(), "x.test").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let b = rotate(dir.path(), "x.test", 1234).unwrap();
        assert_ne!(a.key_id, b.key_id);
        assert_ne!(a.public_key_base64(), b.public_key_base64());
        let old = load(dir.path()).unwrap();
        assert_eq!(
            old,
            vec![OldVerifyKey {
                key_id: a.key_id.to_string(),
                key: a.public_key_base64(),
                expired_ts: 1234
            }]
        );
        // The new key is the one loaded from now on.
        let again = ServerKey::load_or_create(dir.path(), "x.test").unwrap();
        assert_eq!(again.key_id, b.key_id);
        rotate(dir.path(), "x.test", 5678).unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn malformed_old_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(OLD_KEYS_FILE_NAME),
            "ed25519:a abc notanumber\n",
        )
        .unwrap();
        assert!(load(dir.path()).is_err());
        fs::write(dir.path().join(OLD_KEYS_FILE_NAME), "rsa:a abc 1\n").unwrap();
        assert!(load(dir.path()).is_err());
    }
}

//! The server's ed25519 signing key: created on first start, kept in
//! `data_dir/signing.key`, loaded on later starts.
//!
//! The file uses Synapse's format, one line `ed25519 <version> <seed>`, where
//! `<seed>` is the 32-byte ed25519 seed in unpadded base64. That keeps keys
//! portable between hearth and Synapse tooling.
//!
//! Synchronous IO on purpose: this runs once on the main thread before the
//! shards start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::serde::{base64::Standard, Base64};
use ruma::signatures::{sign_json, Ed25519KeyPair};
use ruma::{OwnedServerName, OwnedServerSigningKeyId};

/// The key file's name inside `data_dir`.
pub const KEY_FILE_NAME: &str = "signing.key";

/// How long a `/_matrix/key/v2/server` response says our key stays valid.
/// Synapse advertises now + 24 h (see /work/shared/notes/synapse-as-a-peer.md);
/// peers cache the key that long.
pub const DEFAULT_KEY_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;

/// PKCS#8 v1 DER prefix of an Ed25519 private key (RFC 8410 §7): the 32-byte
/// seed follows. ruma's key pair is constructed from PKCS#8.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Errors loading, creating or using the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    #[error("I/O error on signing key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "signing key file {path} is malformed: {reason} \
         (expected one line `ed25519 <key_version> <unpadded base64 seed>`)"
    )]
    Malformed { path: PathBuf, reason: String },
    /// The key is a secret: a file other users can read is refused, not
    /// used (it is created 0600; someone changed it, or copied it in).
    #[error(
        "signing key file {path} is readable by other users (mode {mode:o}); \
         refusing to use it: run `chmod 600 {path}`"
    )]
    ReadableByOthers { path: PathBuf, mode: u32 },
    #[error("could not get random bytes from the OS: {0}")]
    Random(String),
    #[error("could not sign JSON: {0}")]
    Sign(#[from] ruma::signatures::JsonError),
}

/// The server's identity for signing events and federation requests.
#[derive(Debug)]
pub struct ServerKey {
    pub server_name: OwnedServerName,
    /// `ed25519:<version>`, e.g. `ed25519:a_x3Ub`.
    pub key_id: OwnedServerSigningKeyId,
    pub keypair: Ed25519KeyPair,
}

impl ServerKey {
    /// Loads `data_dir/signing.key`, or creates it (mode 0600, random key
    /// version) if it does not exist. Creates `data_dir` if needed.
    pub fn load_or_create(data_dir: &Path, server_name: &str) -> Result<ServerKey, KeyError> {
        let server_name = OwnedServerName::try_from(server_name)
            .map_err(|_| KeyError::InvalidServerName(server_name.to_owned()))?;
        let path = data_dir.join(KEY_FILE_NAME);
        match fs::read_to_string(&path) {
            Ok(text) => {
                refuse_if_readable_by_others(&path)?;
                Self::parse(&path, &text, server_name)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::create(data_dir, &path, server_name)
            }
            Err(source) => Err(KeyError::Io { path, source }),
        }
    }

    /// Builds a key from a raw seed (tests, and the file loader).
    pub fn from_seed(
        server_name: OwnedServerName,
        version: &str,
        seed: &[u8; 32],
    ) -> Result<ServerKey, String> {
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            // Spec keys.yaml: "The version must have characters matching [a-zA-Z0-9_]".
            return Err(format!(
                "bad key version {version:?} (allowed: [a-zA-Z0-9_]+)"
            ));
        }
        let key_id: OwnedServerSigningKeyId = format!("ed25519:{version}")
            .try_into()
            .map_err(|e| format!("bad key id: {e}"))?;
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(seed);
        let keypair = Ed25519KeyPair::from_der(&der, version.to_owned())
            .map_err(|e| format!("bad ed25519 seed: {e}"));
        der.fill(0);
        Ok(ServerKey {
            server_name,
            key_id,
            keypair: keypair?,
        })
    }

    /// The key version (the part of `key_id` after `ed25519:`).
    pub fn version(&self) -> &str {
        self.keypair.version()
    }

    /// Public key in unpadded standard base64, as published in `verify_keys`.
    pub fn public_key_base64(&self) -> String {
        Base64::<Standard, _>::new(self.keypair.public_key()).encode()
    }

    /// Signs a JSON object in place (spec appendices "Signing JSON"), e.g. a
    /// federation request's `X-Matrix` payload or a key response.
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) -> Result<(), KeyError> {
        Ok(sign_json(self.server_name.as_str(), &self.keypair, object)?)
    }

    /// Body of `GET /_matrix/key/v2/server` (server-server-api "Publishing
    /// Keys", definitions/keys.yaml), signed with this key. `valid_until_ts`
    /// is `now_ms + valid_for_ms`.
    pub fn key_server_response(
        &self,
        now_ms: u64,
        valid_for_ms: u64,
    ) -> Result<CanonicalJsonObject, KeyError> {
        self.key_server_response_with_old(now_ms, valid_for_ms, &[])
    }

    /// [`key_server_response`](Self::key_server_response) listing retired
    /// keys in `old_verify_keys`.
    pub fn key_server_response_with_old(
        &self,
        now_ms: u64,
        valid_for_ms: u64,
        old: &[super::old_keys::OldVerifyKey],
    ) -> Result<CanonicalJsonObject, KeyError> {
        let old_keys: CanonicalJsonObject = old
            .iter()
            .map(|k| {
                let ts = ruma::Int::try_from(k.expired_ts).unwrap_or(ruma::Int::MAX);
                (
                    k.key_id.clone(),
                    CanonicalJsonValue::Object(CanonicalJsonObject::from([
                        ("key".to_owned(), CanonicalJsonValue::String(k.key.clone())),
                        ("expired_ts".to_owned(), CanonicalJsonValue::Integer(ts)),
                    ])),
                )
            })
            .collect();
        let valid_until = now_ms.saturating_add(valid_for_ms);
        let valid_until = ruma::Int::try_from(valid_until).unwrap_or(ruma::Int::MAX);
        let verify_key = CanonicalJsonObject::from([(
            "key".to_owned(),
            CanonicalJsonValue::String(self.public_key_base64()),
        )]);
        let mut body = CanonicalJsonObject::from([
            (
                "server_name".to_owned(),
                CanonicalJsonValue::String(self.server_name.to_string()),
            ),
            (
                "valid_until_ts".to_owned(),
                CanonicalJsonValue::Integer(valid_until),
            ),
            (
                "verify_keys".to_owned(),
                CanonicalJsonValue::Object(CanonicalJsonObject::from([(
                    self.key_id.to_string(),
                    CanonicalJsonValue::Object(verify_key),
                )])),
            ),
            (
                "old_verify_keys".to_owned(),
                CanonicalJsonValue::Object(old_keys),
            ),
        ]);
        self.sign_json(&mut body)?;
        Ok(body)
    }

    fn parse(path: &Path, text: &str, server_name: OwnedServerName) -> Result<ServerKey, KeyError> {
        let malformed = |reason: String| KeyError::Malformed {
            path: path.to_owned(),
            reason,
        };
        // Synapse's reader accepts several lines; the first key is the signing key.
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| malformed("file is empty".to_owned()))?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [alg, version, seed_b64] = parts.as_slice() else {
            return Err(malformed(format!(
                "expected 3 fields, found {}",
                parts.len()
            )));
        };
        if *alg != "ed25519" {
            return Err(malformed(format!("unsupported algorithm {alg:?}")));
        }
        let seed = Base64::<Standard, [u8; 32]>::parse(seed_b64)
            .map_err(|e| malformed(format!("seed is not 32 bytes of base64: {e}")))?;
        Self::from_seed(server_name, version, seed.as_inner()).map_err(malformed)
    }

    fn create(
        data_dir: &Path,
        path: &Path,
        server_name: OwnedServerName,
    ) -> Result<ServerKey, KeyError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| KeyError::Io { path: p, source }
        };
        fs::create_dir_all(data_dir).map_err(io(data_dir))?;

        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        // Random version: peers cache keys by (server, key id) until
        // valid_until_ts, so a re-created key must not reuse an old id.
        let version = format!("a_{}", random_alphanumeric(4)?);
        let key = Self::from_seed(server_name, &version, &seed).map_err(|reason| {
            KeyError::Malformed {
                path: path.to_owned(),
                reason,
            }
        })?;
        let mut line = format!(
            "ed25519 {version} {}\n",
            Base64::<Standard, _>::new(seed).encode()
        )
        .into_bytes();
        seed.fill(0);

        // Write a temp file (0600 from the start), then hard-link it into
        // place: the link fails if another process created the key meanwhile,
        // so an existing key is never clobbered.
        let tmp = data_dir.join(format!("{KEY_FILE_NAME}.tmp.{}", std::process::id()));
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&line)?;
            f.sync_all()
        })();
        // Best-effort scrub of the in-memory copy of the secret.
        line.fill(0);
        written.map_err(io(&tmp))?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(dir) = fs::File::open(data_dir) {
                    let _ = dir.sync_all();
                }
                tracing::info!(key_id = %key.key_id, path = %path.display(), "created signing key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = fs::read_to_string(path).map_err(io(path))?;
                Self::parse(path, &text, key.server_name)
            }
            Err(source) => Err(KeyError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// The key is a secret: a file group or others can read is refused
/// (Synapse only warns; a leaked key lets anyone speak for the server).
fn refuse_if_readable_by_others(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        return Err(KeyError::ReadableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// `n` random characters from `[A-Za-z0-9]`, unbiased (rejection sampling).
fn random_alphanumeric(n: usize) -> Result<String, KeyError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut buf = [0u8; 16];
        getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
        for b in buf {
            // 248 = 4 * 62: bytes at or above it would bias the low letters.
            if b < 248 && out.len() < n {
                out.push(char::from(ALPHABET[usize::from(b) % 62]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ruma::signatures::{verify_json, PublicKeyMap, PublicKeySet};
    use std::os::unix::fs::PermissionsExt;

    /// Seed of the spec's test vectors (appendices "Cryptographic Test Vectors").
    pub(crate) const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    pub(crate) fn spec_key() -> ServerKey {
        let seed = Base64::<Standard, [u8; 32]>::parse(SPEC_SEED).unwrap();
        ServerKey::from_seed("domain".try_into().unwrap(), "1", seed.as_inner()).unwrap()
    }

    fn json(s: &str) -> CanonicalJsonObject {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn spec_json_signing_vectors() {
        let key = spec_key();
        assert_eq!(key.key_id.as_str(), "ed25519:1");

        let mut empty = CanonicalJsonObject::new();
        key.sign_json(&mut empty).unwrap();
        assert_eq!(
            empty,
            json(
                r#"{"signatures":{"domain":{"ed25519:1":"K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}}"#
            )
        );

        let mut data = json(r#"{"one":1,"two":"Two"}"#);
        key.sign_json(&mut data).unwrap();
        assert_eq!(
            data,
            json(
                r#"{"one":1,"signatures":{"domain":{"ed25519:1":"KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}},"two":"Two"}"#
            )
        );
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let a = ServerKey::load_or_create(&data_dir, "hearth.test:8448").unwrap();
        let path = data_dir.join(KEY_FILE_NAME);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let text = fs::read_to_string(&path).unwrap();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0], "ed25519");
        assert!(
            fields[1].starts_with("a_") && fields[1].len() == 6,
            "{}",
            fields[1]
        );
        assert_eq!(fields[2].len(), 43, "unpadded base64 of 32 bytes");
        assert_eq!(a.key_id.as_str(), format!("ed25519:{}", fields[1]));
        // No temp file left behind.
        assert_eq!(fs::read_dir(&data_dir).unwrap().count(), 1);

        let b = ServerKey::load_or_create(&data_dir, "hearth.test:8448").unwrap();
        assert_eq!(a.key_id, b.key_id);
        assert_eq!(a.public_key_base64(), b.public_key_base64());
        assert_eq!(b.server_name.as_str(), "hearth.test:8448");
    }

    #[test]
    fn new_keys_get_random_ids() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = ServerKey::load_or_create(d1.path(), "x.test").unwrap();
        let b = ServerKey::load_or_create(d2.path(), "x.test").unwrap();
        assert_ne!(a.public_key_base64(), b.public_key_base64());
        // 62^4 ids: a collision here is a one-in-14-million fluke.
        assert_ne!(a.key_id, b.key_id);
    }

    /// A key file as an operator copies it in: mode 0600.
    fn write_secret(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        write_secret(&path, &format!("ed25519 a_AbC9 {SPEC_SEED}\n"));
        for mode in [0o644, 0o640, 0o604] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = ServerKey::load_or_create(dir.path(), "domain").unwrap_err();
            assert!(
                matches!(err, KeyError::ReadableByOthers { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ServerKey::load_or_create(dir.path(), "domain").is_ok());
    }

    #[test]
    fn loads_synapse_format_file() {
        let dir = tempfile::tempdir().unwrap();
        write_secret(
            &dir.path().join(KEY_FILE_NAME),
            &format!("\ned25519 a_AbC9 {SPEC_SEED}\n"),
        );
        let k = ServerKey::load_or_create(dir.path(), "domain").unwrap();
        assert_eq!(k.key_id.as_str(), "ed25519:a_AbC9");
        assert_eq!(k.version(), "a_AbC9");
        assert_eq!(k.public_key_base64(), spec_key().public_key_base64());
    }

    #[test]
    fn corrupt_files_are_clear_errors() {
        let cases = [
            "",
            "   \n\n",
            "ed25519 a_1",
            "ed25519 a_1 AAAA extra",
            "rsa a_1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
            "ed25519 a_1 not*base64",
            "ed25519 a_1 AAAA",
            "ed25519 bad-version YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
        ];
        for text in cases {
            let dir = tempfile::tempdir().unwrap();
            write_secret(&dir.path().join(KEY_FILE_NAME), text);
            let err = ServerKey::load_or_create(dir.path(), "x.test").unwrap_err();
            assert!(matches!(err, KeyError::Malformed { .. }), "{text:?}: {err}");
            assert!(err.to_string().contains("signing.key"), "{err}");
        }
        // The bad file is left alone, not replaced.
        let dir = tempfile::tempdir().unwrap();
        write_secret(&dir.path().join(KEY_FILE_NAME), "junk");
        assert!(ServerKey::load_or_create(dir.path(), "x.test").is_err());
        assert_eq!(
            fs::read_to_string(dir.path().join(KEY_FILE_NAME)).unwrap(),
            "junk"
        );
    }

    #[test]
    fn bad_server_name_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServerKey::load_or_create(dir.path(), "not a server").unwrap_err();
        assert!(matches!(err, KeyError::InvalidServerName(_)));
    }

    #[test]
    fn key_server_response_is_signed_and_well_formed() {
        let key = spec_key();
        let body = key
            .key_server_response(1_000, DEFAULT_KEY_VALIDITY_MS)
            .unwrap();
        let v: serde_json::Value = serde_json::to_value(&body).unwrap();
        assert_eq!(v["server_name"], "domain");
        assert_eq!(v["valid_until_ts"], 1_000 + DEFAULT_KEY_VALIDITY_MS);
        assert_eq!(
            v["verify_keys"]["ed25519:1"]["key"],
            key.public_key_base64()
        );
        assert_eq!(v["old_verify_keys"], serde_json::json!({}));
        assert!(v["signatures"]["domain"]["ed25519:1"].is_string());

        let mut keys = PublicKeySet::new();
        keys.insert(
            "ed25519:1".to_owned(),
            Base64::parse(key.public_key_base64()).unwrap(),
        );
        let map = PublicKeyMap::from([("domain".to_owned(), keys)]);
        verify_json(&map, &body).unwrap();
    }

    #[test]
    fn server_key_can_be_shared_across_shards() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ServerKey>();
    }

    #[test]
    fn random_alphanumeric_is_alphanumeric() {
        let s = random_alphanumeric(200).unwrap();
        assert_eq!(s.len(), 200);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}

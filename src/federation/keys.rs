//! Remote servers' signing keys: fetched from the origin
//! (`/_matrix/key/v2/server`) or through configured notaries
//! (`/_matrix/key/v2/query`), checked (self-signed by the origin, and by
//! the notary when one answered), and cached per shard until their
//! `valid_until_ts` (at most 7 days ahead, as the spec's `keys.yaml`
//! demands). Concurrent fetches of one server's keys are one request
//! ([`FutureCache`]).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::serde::{base64::Standard, Base64};

use super::x_matrix::verify_signature;
use super::Federation;
use crate::primitives::unix_ms;

/// The spec's cap on how long a fetched key is trusted.
const MAX_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;
/// A key id the cached answer lacks is refetched at most this often
/// (forged ids must not make us hammer the origin).
const REFETCH_UNKNOWN_AFTER_MS: u64 = 60_000;
/// Largest key response accepted.
const MAX_KEY_RESPONSE_BYTES: usize = 1024 * 1024;

/// What a server's keys response says, once checked.
#[derive(Debug, Clone)]
pub struct ServerKeys {
    pub server_name: String,
    /// key id → raw ed25519 public key.
    pub verify_keys: BTreeMap<String, Vec<u8>>,
    /// key id → (raw public key, expired_ts).
    pub old_verify_keys: BTreeMap<String, (Vec<u8>, u64)>,
    /// The lesser of the response's value and 7 days after the fetch.
    pub valid_until_ts: u64,
    pub fetched_at: u64,
    /// The origin-signed response, as received (a notary re-serves it
    /// with its own signature added).
    pub signed: CanonicalJsonObject,
}

/// Why keys could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyFetchError {
    #[error("cannot fetch keys of {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("invalid key response from {server}: {reason}")]
    Invalid { server: String, reason: String },
    #[error("{server} has no valid key {key_id}")]
    NoSuchKey { server: String, key_id: String },
}

fn obj<'a>(o: &'a CanonicalJsonObject, k: &str) -> Option<&'a CanonicalJsonObject> {
    match o.get(k) {
        Some(CanonicalJsonValue::Object(v)) => Some(v),
        _ => None,
    }
}

fn str_of<'a>(o: &'a CanonicalJsonObject, k: &str) -> Option<&'a str> {
    match o.get(k) {
        Some(CanonicalJsonValue::String(v)) => Some(v),
        _ => None,
    }
}

fn int_of(o: &CanonicalJsonObject, k: &str) -> Option<u64> {
    match o.get(k) {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).ok(),
        _ => None,
    }
}

fn decode_key(b64: &str) -> Option<Vec<u8>> {
    let k = Base64::<Standard, Vec<u8>>::parse(b64).ok()?;
    (k.as_bytes().len() == 32).then(|| k.into_inner())
}

/// Checks one `/_matrix/key/v2/server`-shaped object for `server`: its
/// `server_name`, its keys, and that every signature it carries by
/// `server` with one of its `verify_keys` is valid (at least one must be).
pub fn check_key_response(
    signed: CanonicalJsonObject,
    server: &str,
    now_ms: u64,
) -> Result<ServerKeys, String> {
    if str_of(&signed, "server_name") != Some(server) {
        return Err("server_name does not match".into());
    }
    let valid_until = int_of(&signed, "valid_until_ts").ok_or("no valid_until_ts")?;
    let mut verify_keys = BTreeMap::new();
    for (id, v) in obj(&signed, "verify_keys").ok_or("no verify_keys")? {
        let CanonicalJsonValue::Object(v) = v else {
            return Err(format!("verify key {id} is not an object"));
        };
        let key = str_of(v, "key")
            .and_then(decode_key)
            .ok_or_else(|| format!("verify key {id} is not 32 bytes of base64"))?;
        verify_keys.insert(id.clone(), key);
    }
    let mut old_verify_keys = BTreeMap::new();
    if let Some(old) = obj(&signed, "old_verify_keys") {
        for (id, v) in old {
            let CanonicalJsonValue::Object(v) = v else {
                continue;
            };
            if let (Some(key), Some(exp)) = (
                str_of(v, "key").and_then(decode_key),
                int_of(v, "expired_ts"),
            ) {
                old_verify_keys.insert(id.clone(), (key, exp));
            }
        }
    }
    let sigs = obj(&signed, "signatures")
        .and_then(|s| obj(s, server))
        .ok_or("not signed by the server")?;
    let mut verified = 0;
    for (id, sig) in sigs {
        let Some(key) = verify_keys.get(id) else {
            continue;
        };
        let CanonicalJsonValue::String(sig) = sig else {
            return Err(format!("signature {id} is not a string"));
        };
        if !verify_signature(&signed, key, sig) {
            return Err(format!("signature by {id} does not verify"));
        }
        verified += 1;
    }
    if verified == 0 {
        return Err("no signature by one of its verify_keys".into());
    }
    Ok(ServerKeys {
        server_name: server.to_owned(),
        verify_keys,
        old_verify_keys,
        valid_until_ts: valid_until.min(now_ms.saturating_add(MAX_VALIDITY_MS)),
        fetched_at: now_ms,
        signed,
    })
}

/// Whether `signed` carries a valid signature by `notary` with one of
/// `keys` (key id → raw key).
fn notary_signed(
    signed: &CanonicalJsonObject,
    notary: &str,
    keys: &BTreeMap<String, Vec<u8>>,
) -> bool {
    let Some(sigs) = obj(signed, "signatures").and_then(|s| obj(s, notary)) else {
        return false;
    };
    sigs.iter().any(|(id, sig)| match (keys.get(id), sig) {
        (Some(k), CanonicalJsonValue::String(s)) => verify_signature(signed, k, s),
        _ => false,
    })
}

impl Federation {
    /// The public key `key_id` of `server`, valid now: for checking a
    /// request's signature (current keys only, not `old_verify_keys`).
    pub async fn verify_key(
        self: &Rc<Self>,
        server: &str,
        key_id: &str,
    ) -> Result<Vec<u8>, KeyFetchError> {
        let no_key = || KeyFetchError::NoSuchKey {
            server: server.to_owned(),
            key_id: key_id.to_owned(),
        };
        if server == self.key.server_name.as_str() {
            return if key_id == self.key.key_id.as_str() {
                Ok(self.key.keypair.public_key().to_vec())
            } else {
                Err(no_key())
            };
        }
        let now = unix_ms();
        let keys = self.server_keys(server, now).await?;
        if let Some(k) = keys.verify_keys.get(key_id) {
            return Ok(k.clone());
        }
        if now.saturating_sub(keys.fetched_at) < REFETCH_UNKNOWN_AFTER_MS {
            return Err(no_key());
        }
        // Maybe rotated since we fetched: once more, fresh.
        self.key_cache.invalidate(&server.to_owned());
        let keys = self.server_keys(server, now).await?;
        keys.verify_keys.get(key_id).cloned().ok_or_else(no_key)
    }

    /// `server`'s keys, valid at least until `min_valid_until`: cached, or
    /// fetched once however many ask at the same time.
    pub async fn server_keys(
        self: &Rc<Self>,
        server: &str,
        min_valid_until: u64,
    ) -> Result<Rc<ServerKeys>, KeyFetchError> {
        let key = server.to_owned();
        if let Some(k) = self.key_cache.get_if_present(&key) {
            if k.valid_until_ts > min_valid_until.max(unix_ms()) {
                return Ok(k);
            }
            self.key_cache.invalidate(&key);
        }
        let fed = Rc::clone(self);
        let s = key.clone();
        self.key_cache
            .get_or_load(
                key,
                move || async move { fed.fetch_keys(&s).await.map(Rc::new) },
            )
            .await
    }

    /// The keys this shard holds for `server` without fetching (notary).
    pub fn cached_server_keys(&self, server: &str) -> Option<Rc<ServerKeys>> {
        self.key_cache.get_if_present(&server.to_owned())
    }

    /// Notaries first (if configured, in order), then the origin itself.
    async fn fetch_keys(self: &Rc<Self>, server: &str) -> Result<ServerKeys, KeyFetchError> {
        let mut last = None;
        for notary in &self.notaries {
            if notary.server_name == server {
                continue;
            }
            match self.fetch_via_notary(notary, server).await {
                Ok(k) => return Ok(k),
                Err(e) => {
                    tracing::info!(notary = %notary.server_name, %server, error = %e, "notary key query failed");
                    last = Some(e);
                }
            }
        }
        match self.fetch_direct(server).await {
            Ok(k) => Ok(k),
            Err(e) => {
                if let Some(n) = last {
                    tracing::debug!(error = %n, "notaries failed before the origin did");
                }
                Err(e)
            }
        }
    }

    async fn fetch_direct(&self, server: &str) -> Result<ServerKeys, KeyFetchError> {
        let unreachable = |reason: String| KeyFetchError::Unreachable {
            server: server.to_owned(),
            reason,
        };
        let resp = self
            .get_unsigned(server, "/_matrix/key/v2/server", MAX_KEY_RESPONSE_BYTES)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if resp.status != 200 {
            return Err(unreachable(format!("answered {}", resp.status)));
        }
        let invalid = |reason: String| KeyFetchError::Invalid {
            server: server.to_owned(),
            reason,
        };
        let signed: CanonicalJsonObject =
            serde_json::from_slice(&resp.body).map_err(|e| invalid(e.to_string()))?;
        check_key_response(signed, server, unix_ms()).map_err(invalid)
    }

    async fn fetch_via_notary(
        self: &Rc<Self>,
        notary: &Notary,
        server: &str,
    ) -> Result<ServerKeys, KeyFetchError> {
        let invalid = |reason: String| KeyFetchError::Invalid {
            server: notary.server_name.clone(),
            reason,
        };
        let body = serde_json::json!({ "server_keys": { server: {} } });
        let resp = self
            .request(
                &notary.server_name,
                "POST",
                "/_matrix/key/v2/query",
                Some(&body),
            )
            .await
            .map_err(|e| KeyFetchError::Unreachable {
                server: notary.server_name.clone(),
                reason: e.to_string(),
            })?;
        if resp.status != 200 {
            return Err(invalid(format!("answered {}", resp.status)));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            server_keys: Vec<CanonicalJsonObject>,
        }
        let answer: Answer =
            serde_json::from_slice(&resp.body).map_err(|e| invalid(e.to_string()))?;
        let notary_keys = if notary.verify_keys.is_empty() {
            // No configured keys: the notary's own, straight from it.
            Rc::new(self.fetch_direct(&notary.server_name).await?.verify_keys)
        } else {
            notary.verify_keys.clone()
        };
        let now = unix_ms();
        let mut best: Option<ServerKeys> = None;
        for signed in answer.server_keys {
            if str_of(&signed, "server_name") != Some(server) {
                continue;
            }
            if !notary_signed(&signed, &notary.server_name, &notary_keys) {
                return Err(invalid("answer not signed by the notary".into()));
            }
            let mut keys = check_key_response(signed, server, now).map_err(invalid)?;
            // Re-serve the origin's own signatures only.
            if let Some(CanonicalJsonValue::Object(sigs)) = keys.signed.get_mut("signatures") {
                sigs.retain(|k, _| k == server);
            }
            if best
                .as_ref()
                .is_none_or(|b| keys.valid_until_ts > b.valid_until_ts)
            {
                best = Some(keys);
            }
        }
        best.ok_or_else(|| invalid(format!("no keys for {server}")))
    }
}

/// A configured notary, its keys decoded.
#[derive(Debug, Clone)]
pub struct Notary {
    pub server_name: String,
    pub verify_keys: Rc<BTreeMap<String, Vec<u8>>>,
}

impl Notary {
    pub fn from_config(t: &crate::config::TrustedKeyServer) -> Notary {
        Notary {
            server_name: t.server_name.clone(),
            verify_keys: Rc::new(
                t.verify_keys
                    .iter()
                    .filter_map(|(id, k)| decode_key(k).map(|k| (id.clone(), k)))
                    .collect(),
            ),
        }
    }
}

/// How long the per-shard key cache may keep an entry (entries also
/// expire by their own `valid_until_ts`).
pub const CACHE_TTL: Duration = Duration::from_millis(MAX_VALIDITY_MS);

#[cfg(test)]
mod tests {
    use super::*;

    fn own_response(valid_for: u64) -> (crate::events::ServerKey, CanonicalJsonObject) {
        let key = crate::events::signing_key::tests::spec_key();
        let body = key.key_server_response(1_000, valid_for).unwrap();
        (key, body)
    }

    #[test]
    fn a_self_signed_response_checks_out() {
        let (key, body) = own_response(1_000_000);
        let k = check_key_response(body, "domain", 1_000).unwrap();
        assert_eq!(
            k.verify_keys[key.key_id.as_str()],
            key.keypair.public_key().to_vec()
        );
        assert_eq!(k.valid_until_ts, 1_001_000);
    }

    #[test]
    fn validity_is_capped_at_seven_days() {
        let (_, body) = own_response(365 * 24 * 3600 * 1000);
        let k = check_key_response(body, "domain", 1_000).unwrap();
        assert_eq!(k.valid_until_ts, 1_000 + MAX_VALIDITY_MS);
    }

    #[test]
    fn forged_or_mismatched_responses_are_refused() {
        let (_, body) = own_response(1_000);
        assert!(check_key_response(body.clone(), "other.org", 0).is_err());
        let mut tampered = body.clone();
        tampered.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(99_999_999u32.into()),
        );
        assert!(check_key_response(tampered, "domain", 0).is_err());
        let mut unsigned = body.clone();
        unsigned.remove("signatures");
        assert!(check_key_response(unsigned, "domain", 0).is_err());
        // Signed, but by a key that is not among its verify_keys.
        let other =
            crate::events::ServerKey::from_seed("domain".try_into().unwrap(), "2", &[7; 32])
                .unwrap();
        let mut wrong = body;
        wrong.remove("signatures");
        other.sign_json(&mut wrong).unwrap();
        assert!(check_key_response(wrong, "domain", 0).is_err());
    }

    #[test]
    fn notary_signature_check() {
        let (_, mut body) = own_response(1_000);
        let notary =
            crate::events::ServerKey::from_seed("notary.org".try_into().unwrap(), "n", &[9; 32])
                .unwrap();
        let keys = BTreeMap::from([(
            notary.key_id.to_string(),
            notary.keypair.public_key().to_vec(),
        )]);
        assert!(!notary_signed(&body, "notary.org", &keys));
        notary.sign_json(&mut body).unwrap();
        assert!(notary_signed(&body, "notary.org", &keys));
        // Still valid for the origin after the co-signature.
        assert!(check_key_response(body, "domain", 0).is_ok());
    }
}

//! Checks of uploaded keys: ids must be the requester's, a device's keys
//! must carry a valid self-signature (ed25519 of the device over the
//! canonical JSON, spec "Device keys").

use ruma::serde::base64::Standard;
use ruma::serde::Base64;
use ruma::signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes};
use ruma::{CanonicalJsonObject, SigningKeyAlgorithm};
use serde_json::{Map, Value};

use super::KeysError;

fn bad(msg: impl Into<String>) -> KeysError {
    KeysError::InvalidParam(msg.into())
}

/// `device_keys` of an upload: ids match `(user, device)`, and the device's
/// `ed25519:{device}` key signed the object.
pub fn device_keys(keys: &Map<String, Value>, user: &str, device: &str) -> Result<(), KeysError> {
    if keys.get("user_id").and_then(Value::as_str) != Some(user) {
        return Err(bad("user_id must match the requesting user"));
    }
    if keys.get("device_id").and_then(Value::as_str) != Some(device) {
        return Err(bad("device_id must match the requesting device"));
    }
    if !keys.get("algorithms").is_some_and(Value::is_array) {
        return Err(bad("algorithms must be an array"));
    }
    let key_id = format!("ed25519:{device}");
    let public = keys
        .get("keys")
        .and_then(|k| k.get(&key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("device keys lack {key_id}")))?;
    keys.get("signatures")
        .and_then(|s| s.get(user))
        .and_then(|s| s.get(&key_id))
        .ok_or_else(|| bad("device keys are not self-signed"))?;
    verify_signed(keys, user, &key_id, public).map_err(|e| match e {
        KeysError::InvalidSignature(_) => bad("invalid signature on device keys"),
        other => other,
    })
}

/// Verifies `signer`'s signature `key_id` (`ed25519:...`) on `object`
/// with the unpadded base64 ed25519 key `public` (spec "Signing JSON":
/// over the canonical JSON without `signatures` and `unsigned`).
pub fn verify_signed(
    object: &Map<String, Value>,
    signer: &str,
    key_id: &str,
    public: &str,
) -> Result<(), KeysError> {
    let invalid = |m: &str| KeysError::InvalidSignature(m.to_owned());
    let signature = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("missing signature"))?;
    let public =
        Base64::<Standard, Vec<u8>>::parse(public).map_err(|_| bad("ed25519 key is not base64"))?;
    let signature = Base64::<Standard, Vec<u8>>::parse(signature)
        .map_err(|_| invalid("signature is not base64"))?;
    let canonical: CanonicalJsonObject =
        ruma::canonical_json::try_from_json_map(object.clone()).map_err(|e| bad(e.to_string()))?;
    let text = to_canonical_json_string_for_signing(&canonical).map_err(|e| bad(e.to_string()))?;
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public.as_bytes(),
        signature.as_bytes(),
        text.as_bytes(),
    )
    .map_err(|_| invalid("invalid signature"))
}

/// `object` without `signatures` and `unsigned`: what a signature covers,
/// to compare an uploaded copy with the stored one.
pub fn signed_part(object: &Map<String, Value>) -> Map<String, Value> {
    let mut m = object.clone();
    m.remove("signatures");
    m.remove("unsigned");
    m
}

/// `algorithm:key_id` of a one-time or fallback key, split.
pub fn split_key_id(id: &str) -> Result<(&str, &str), KeysError> {
    match id.split_once(':') {
        Some((alg, key)) if !alg.is_empty() && !key.is_empty() && id.len() <= 255 => Ok((alg, key)),
        _ => Err(bad(format!("invalid key id {id:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_must_match_and_signature_is_required() {
        let keys = json!({"user_id": "@a:x", "device_id": "D", "algorithms": [], "keys": {}});
        let m = keys.as_object().unwrap();
        assert!(device_keys(m, "@b:x", "D").is_err());
        assert!(device_keys(m, "@a:x", "E").is_err());
        assert!(device_keys(m, "@a:x", "D").is_err()); // no key, no signature
    }

    #[test]
    fn a_self_signature_is_verified_over_the_canonical_json() {
        use ruma::signatures::{sign_json, Ed25519KeyPair};
        let kp = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "D".into()).unwrap();
        let public = Base64::<Standard, Vec<u8>>::new(kp.public_key().to_vec()).encode();
        let keys = json!({"user_id": "@a:x", "device_id": "D", "algorithms": ["m.megolm.v1.aes-sha2"],
                          "keys": {"ed25519:D": public}});
        let mut obj: CanonicalJsonObject =
            ruma::canonical_json::try_from_json_map(keys.as_object().unwrap().clone()).unwrap();
        sign_json("@a:x", &kp, &mut obj).unwrap();
        let mut signed = serde_json::to_value(obj).unwrap();
        // `unsigned` is outside the signature (spec "Signing JSON").
        signed["unsigned"] = json!({"device_display_name": "phone"});
        assert!(device_keys(signed.as_object().unwrap(), "@a:x", "D").is_ok());
        signed["algorithms"] = json!([]);
        assert!(device_keys(signed.as_object().unwrap(), "@a:x", "D").is_err());
    }

    #[test]
    fn key_ids() {
        assert_eq!(
            split_key_id("signed_curve25519:AAAA").unwrap(),
            ("signed_curve25519", "AAAA")
        );
        assert!(split_key_id("nocolon").is_err());
        assert!(split_key_id(":x").is_err());
    }
}

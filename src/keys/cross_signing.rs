//! Cross-signing (client-server API "End-to-End Encryption" →
//! "Cross-signing"): the checks of `/keys/device_signing/upload` and of
//! `/keys/signatures/upload`, as pure functions over what is stored (the
//! SQL is in [`super::cross_store`]).
//!
//! Which signatures count: a device of the user is signed by the user's
//! self-signing key; the user's master key by one of the user's devices;
//! another user's master key by the signer's user-signing key. Those last
//! ones are shown to the signer only (spec: "users will only be able to see
//! signatures made by their own user-signing key"), as Synapse does.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::validate::{signed_part, verify_signed};
use super::KeysError;

/// The three kinds of cross-signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Master,
    SelfSigning,
    UserSigning,
}

impl KeyType {
    pub const ALL: [KeyType; 3] = [KeyType::Master, KeyType::SelfSigning, KeyType::UserSigning];

    /// The `usage` value, also the stored `key_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Master => "master",
            KeyType::SelfSigning => "self_signing",
            KeyType::UserSigning => "user_signing",
        }
    }

    pub fn parse(s: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The field of the upload body carrying it.
    pub fn upload_field(self) -> &'static str {
        match self {
            KeyType::Master => "master_key",
            KeyType::SelfSigning => "self_signing_key",
            KeyType::UserSigning => "user_signing_key",
        }
    }

    /// The field of the `/keys/query` answer listing it.
    pub fn query_field(self) -> &'static str {
        match self {
            KeyType::Master => "master_keys",
            KeyType::SelfSigning => "self_signing_keys",
            KeyType::UserSigning => "user_signing_keys",
        }
    }
}

/// A cross-signing key of a user, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossKey {
    pub kind: KeyType,
    /// The unpadded base64 ed25519 public key (its key id after `ed25519:`).
    pub public: String,
    pub json: Map<String, Value>,
}

impl CrossKey {
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.public)
    }
}

fn bad(m: impl Into<String>) -> KeysError {
    KeysError::InvalidParam(m.into())
}

/// Parses one key of an upload (spec `CrossSigningKey`): the requester's
/// `user_id`, `usage` naming `kind`, exactly one `ed25519:<key>` key whose
/// value is `<key>`.
pub fn parse_key(v: &Value, user: &str, kind: KeyType) -> Result<CrossKey, KeysError> {
    let Some(obj) = v.as_object() else {
        return Err(bad(format!("{} must be an object", kind.upload_field())));
    };
    if obj.get("user_id").and_then(Value::as_str) != Some(user) {
        return Err(bad("user_id must match the requesting user"));
    }
    let usage_ok = obj
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind.as_str())));
    if !usage_ok {
        return Err(bad(format!("usage must contain {:?}", kind.as_str())));
    }
    let one = obj
        .get("keys")
        .and_then(Value::as_object)
        .filter(|k| k.len() == 1)
        .and_then(|k| k.iter().next());
    let Some((id, value)) = one else {
        return Err(bad("keys must hold exactly one key"));
    };
    let public = id
        .strip_prefix("ed25519:")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("the key must be an ed25519 key"))?;
    if value.as_str() != Some(public) {
        return Err(bad("the key id must name its public key"));
    }
    Ok(CrossKey {
        kind,
        public: public.to_owned(),
        json: obj.clone(),
    })
}

/// Checks an upload's keys: `self_signing` and `user_signing` must be
/// signed by the master key given with them, else by the stored one (spec
/// "`POST /keys/device_signing/upload`": `M_MISSING_PARAM` when there is
/// none, `M_INVALID_SIGNATURE` for a bad signature). Returns the keys to
/// store.
pub fn check_upload(
    user: &str,
    given: Vec<CrossKey>,
    stored_master: Option<&CrossKey>,
) -> Result<Vec<CrossKey>, KeysError> {
    let master = given
        .iter()
        .find(|k| k.kind == KeyType::Master)
        .or(stored_master)
        .ok_or_else(|| KeysError::MissingParam("no master key available".into()))?;
    for k in given.iter().filter(|k| k.kind != KeyType::Master) {
        verify_signed(&k.json, user, &master.key_id(), &master.public).map_err(|_| {
            KeysError::InvalidSignature(format!(
                "{} is not signed by the master key",
                k.kind.upload_field()
            ))
        })?;
    }
    Ok(given)
}

/// Whether an upload only repeats what is stored (spec: no UIA then, so a
/// retried upload whose answer was lost succeeds).
pub fn is_replay(given: &[CrossKey], stored: &[CrossKey]) -> bool {
    !given.is_empty()
        && given
            .iter()
            .all(|g| stored.iter().any(|s| s.kind == g.kind && s.json == g.json))
}

/// What `/keys/signatures/upload` checks a signer's upload against.
#[derive(Debug, Default)]
pub struct SignerView {
    /// The signer's own cross-signing keys.
    pub own: Vec<CrossKey>,
    /// The signer's devices' keys by device id.
    pub devices: HashMap<String, Map<String, Value>>,
    /// Master keys of the other users named in the upload.
    pub masters: HashMap<String, CrossKey>,
}

impl SignerView {
    fn own(&self, kind: KeyType) -> Option<&CrossKey> {
        self.own.iter().find(|k| k.kind == kind)
    }
}

/// A signature accepted from `/keys/signatures/upload`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSignature {
    pub target_user: String,
    /// A device id or a cross-signing public key.
    pub target_key_id: String,
    pub signer_key_id: String,
    pub signature: String,
    /// `Some(signer)`: a signature of another user's key, shown to the
    /// signer alone.
    pub visible_to: Option<String>,
}

/// Why one signed object of an upload was refused (its `failures` entry).
pub type Failure = (String, String, KeysError);

fn signature_of<'a>(obj: &'a Map<String, Value>, signer: &str, key_id: &str) -> Option<&'a str> {
    obj.get("signatures")?.get(signer)?.get(key_id)?.as_str()
}

/// One signed object of the upload: the signatures to keep, or the error
/// of its `failures` entry.
fn check_one(
    me: &str,
    target: &str,
    key_id: &str,
    obj: &Map<String, Value>,
    view: &SignerView,
) -> Result<Vec<NewSignature>, KeysError> {
    let new = |signer_key_id: &str, visible_to: Option<String>| NewSignature {
        target_user: target.to_owned(),
        target_key_id: key_id.to_owned(),
        signer_key_id: signer_key_id.to_owned(),
        signature: signature_of(obj, me, signer_key_id)
            .unwrap_or_default()
            .to_owned(),
        visible_to,
    };
    let matches = |stored: &Map<String, Value>| {
        if signed_part(stored) == signed_part(obj) {
            Ok(())
        } else {
            Err(KeysError::InvalidSignature(
                "the signed object does not match the stored key".into(),
            ))
        }
    };
    let invalid = |_| KeysError::InvalidSignature("invalid signature".into());
    if target != me {
        // Another user's master key, signed with my user-signing key.
        let usk = view
            .own(KeyType::UserSigning)
            .ok_or_else(|| KeysError::MissingParam("no user-signing key uploaded".into()))?;
        let master = view
            .masters
            .get(target)
            .filter(|m| m.public == key_id)
            .ok_or_else(|| KeysError::NotFound("unknown master key".into()))?;
        matches(&master.json)?;
        verify_signed(obj, me, &usk.key_id(), &usk.public).map_err(invalid)?;
        return Ok(vec![new(&usk.key_id(), Some(me.to_owned()))]);
    }
    if let Some(master) = view.own(KeyType::Master).filter(|m| m.public == key_id) {
        // My master key, signed by my devices.
        matches(&master.json)?;
        let mut out = Vec::new();
        let signers = obj
            .get("signatures")
            .and_then(|s| s.get(me))
            .and_then(Value::as_object);
        for sig_id in signers.into_iter().flat_map(|s| s.keys()) {
            let Some(device) = sig_id.strip_prefix("ed25519:") else {
                continue;
            };
            if device == master.public {
                continue; // its own signature, already part of the key
            }
            let public = view
                .devices
                .get(device)
                .and_then(|d| d.get("keys")?.get(sig_id)?.as_str())
                .ok_or_else(|| KeysError::NotFound("unknown signing device".into()))?;
            verify_signed(obj, me, sig_id, public).map_err(invalid)?;
            out.push(new(sig_id, None));
        }
        if out.is_empty() {
            return Err(KeysError::InvalidSignature("no device signature".into()));
        }
        return Ok(out);
    }
    // One of my devices, signed by my self-signing key.
    let device = view
        .devices
        .get(key_id)
        .ok_or_else(|| KeysError::NotFound("unknown device or key".into()))?;
    let ssk = view
        .own(KeyType::SelfSigning)
        .ok_or_else(|| KeysError::MissingParam("no self-signing key uploaded".into()))?;
    matches(device)?;
    verify_signed(obj, me, &ssk.key_id(), &ssk.public).map_err(invalid)?;
    Ok(vec![new(&ssk.key_id(), None)])
}

/// Checks every signed object of a `/keys/signatures/upload` body by `me`
/// (local users only: remote ones are refused until federation lands).
/// Returns the accepted signatures and the refusals, `(user, key id,
/// why)`, for the answer's `failures`.
pub fn check_signatures(
    me: &str,
    body: &Map<String, Value>,
    view: &SignerView,
    is_local: impl Fn(&str) -> bool,
) -> (Vec<NewSignature>, Vec<Failure>) {
    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    for (target, keys) in body {
        let Some(keys) = keys.as_object() else {
            failures.push((
                target.clone(),
                String::new(),
                KeysError::InvalidParam("expected a map of key ids".into()),
            ));
            continue;
        };
        for (key_id, obj) in keys {
            let outcome = if !is_local(target) {
                Err(KeysError::Unsupported(
                    "signatures of remote keys are not supported yet".into(),
                ))
            } else {
                match obj.as_object() {
                    Some(o) => check_one(me, target, key_id, o, view),
                    None => Err(KeysError::InvalidParam("expected a signed object".into())),
                }
            };
            match outcome {
                Ok(s) => accepted.extend(s),
                Err(e) => failures.push((target.clone(), key_id.clone(), e)),
            }
        }
    }
    (accepted, failures)
}

/// Adds `signatures` (`(signer_user, signer_key_id, signature)`) to a
/// signed object's `signatures`, keeping those it carries.
pub fn merge_signatures(obj: &mut Map<String, Value>, signatures: &[(String, String, String)]) {
    if signatures.is_empty() {
        return;
    }
    let all = obj
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(all) = all.as_object_mut() else {
        return;
    };
    for (user, key_id, sig) in signatures {
        let by = all
            .entry(user.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(by) = by.as_object_mut() {
            by.entry(key_id.clone())
                .or_insert_with(|| Value::String(sig.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::serde::base64::Standard;
    use ruma::serde::Base64;
    use ruma::signatures::{sign_json, Ed25519KeyPair};
    use ruma::CanonicalJsonObject;
    use serde_json::json;

    const ME: &str = "@a:x";

    fn pair() -> (Ed25519KeyPair, String) {
        let doc = Ed25519KeyPair::generate();
        let tmp = Ed25519KeyPair::from_der(&doc, "tmp".into()).unwrap();
        let public = Base64::<Standard, Vec<u8>>::new(tmp.public_key().to_vec()).encode();
        (
            Ed25519KeyPair::from_der(&doc, public.clone()).unwrap(),
            public,
        )
    }

    fn sign(kp: &Ed25519KeyPair, v: Value) -> Value {
        let mut obj: CanonicalJsonObject =
            ruma::canonical_json::try_from_json_map(v.as_object().unwrap().clone()).unwrap();
        sign_json(ME, kp, &mut obj).unwrap();
        serde_json::to_value(obj).unwrap()
    }

    fn key(kind: KeyType, public: &str) -> Value {
        json!({"user_id": ME, "usage": [kind.as_str()],
               "keys": {format!("ed25519:{public}"): public}})
    }

    #[test]
    fn keys_are_parsed_strictly() {
        let (_, p) = pair();
        assert!(parse_key(&key(KeyType::Master, &p), ME, KeyType::Master).is_ok());
        assert!(parse_key(&key(KeyType::Master, &p), "@b:x", KeyType::Master).is_err());
        assert!(parse_key(&key(KeyType::Master, &p), ME, KeyType::SelfSigning).is_err());
        let mut two = key(KeyType::Master, &p);
        two["keys"]["ed25519:other"] = json!("other");
        assert!(parse_key(&two, ME, KeyType::Master).is_err());
        let mut wrong = key(KeyType::Master, &p);
        wrong["keys"] = json!({"ed25519:abc": "def"});
        assert!(parse_key(&wrong, ME, KeyType::Master).is_err());
    }

    #[test]
    fn sub_keys_must_be_signed_by_the_master_key() {
        let (mk, mp) = pair();
        let (_, sp) = pair();
        let master = parse_key(&key(KeyType::Master, &mp), ME, KeyType::Master).unwrap();
        let ssk_signed = sign(&mk, key(KeyType::SelfSigning, &sp));
        let ssk = parse_key(&ssk_signed, ME, KeyType::SelfSigning).unwrap();
        assert!(check_upload(ME, vec![master.clone(), ssk.clone()], None).is_ok());
        assert!(check_upload(ME, vec![ssk.clone()], Some(&master)).is_ok());
        assert!(matches!(
            check_upload(ME, vec![ssk.clone()], None),
            Err(KeysError::MissingParam(_))
        ));
        let unsigned =
            parse_key(&key(KeyType::SelfSigning, &sp), ME, KeyType::SelfSigning).unwrap();
        assert!(matches!(
            check_upload(ME, vec![master.clone(), unsigned], None),
            Err(KeysError::InvalidSignature(_))
        ));
        assert!(is_replay(
            std::slice::from_ref(&master),
            &[master.clone(), ssk]
        ));
        assert!(!is_replay(&[], &[master]));
    }

    #[test]
    fn device_signatures_by_the_self_signing_key() {
        let (sk, sp) = pair();
        let ssk = parse_key(&key(KeyType::SelfSigning, &sp), ME, KeyType::SelfSigning).unwrap();
        let device = json!({"user_id": ME, "device_id": "D", "algorithms": [], "keys": {}});
        let mut view = SignerView {
            own: vec![ssk],
            ..Default::default()
        };
        view.devices
            .insert("D".into(), device.as_object().unwrap().clone());
        let body = json!({ME: {"D": sign(&sk, device.clone()), "E": sign(&sk, device.clone())}});
        let (ok, fails) = check_signatures(ME, body.as_object().unwrap(), &view, |_| true);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].target_key_id, "D");
        assert!(matches!(&fails[..], [(u, k, KeysError::NotFound(_))] if u == ME && k == "E"));
        // Tampered: the object differs from the stored keys.
        let mut other = sign(&sk, device.clone());
        other["algorithms"] = json!(["x"]);
        let body = json!({ME: {"D": other}});
        let (ok, fails) = check_signatures(ME, body.as_object().unwrap(), &view, |_| true);
        assert!(ok.is_empty());
        assert!(matches!(
            &fails[..],
            [(_, _, KeysError::InvalidSignature(_))]
        ));
        // Signed by another key.
        let (bad_key, _) = pair();
        let mut forged = sign(&bad_key, device.clone());
        let sig = forged["signatures"][ME]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone();
        forged["signatures"] = json!({ME: {format!("ed25519:{sp}"): sig}});
        let body = json!({ME: {"D": forged}});
        let (_, fails) = check_signatures(ME, body.as_object().unwrap(), &view, |_| true);
        assert!(matches!(
            &fails[..],
            [(_, _, KeysError::InvalidSignature(_))]
        ));
    }

    #[test]
    fn merged_signatures_keep_existing_ones() {
        let mut obj = json!({"signatures": {ME: {"ed25519:D": "s1"}}})
            .as_object()
            .unwrap()
            .clone();
        merge_signatures(
            &mut obj,
            &[
                (ME.into(), "ed25519:D".into(), "other".into()),
                (ME.into(), "ed25519:K".into(), "s2".into()),
            ],
        );
        assert_eq!(obj["signatures"][ME]["ed25519:D"], "s1");
        assert_eq!(obj["signatures"][ME]["ed25519:K"], "s2");
    }
}

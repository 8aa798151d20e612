//! End-to-end: cross-signing over HTTP against the real binary (2 shards,
//! or 1 under `HEARTH_TEST_SHARDS=1`) and a real PostgreSQL —
//! `/keys/device_signing/upload` (UIA except for the first upload and
//! replays), `/keys/signatures/upload` (verified, `failures`), the keys and
//! merged signatures in `/keys/query`, and the changes in
//! `device_lists.changed` and `/keys/changes`. Keys are signed here with
//! ruma's ed25519, as a client's Olm machine would.

mod common;

use common::{assert_err, call, ok, Hearth, Opts, Registered};
use hearth::db::testing::TestCluster;
use ruma::serde::base64::Standard;
use ruma::serde::Base64;
use ruma::signatures::{sign_json, Ed25519KeyPair};
use ruma::CanonicalJsonObject;
use serde_json::{json, Value};

fn start() -> Hearth {
    let db = TestCluster::shared().fresh_database();
    Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()))
}

fn b64(bytes: &[u8]) -> String {
    Base64::<Standard, Vec<u8>>::new(bytes.to_vec()).encode()
}

/// A key pair whose key id is `name` (a device id), or its own public key
/// (`None`: a cross-signing key), with the public key.
fn pair(name: Option<&str>) -> (Ed25519KeyPair, String) {
    let doc = Ed25519KeyPair::generate();
    let tmp = Ed25519KeyPair::from_der(&doc, "tmp".into()).unwrap();
    let public = b64(&tmp.public_key());
    let id = name.map(str::to_owned).unwrap_or_else(|| public.clone());
    (Ed25519KeyPair::from_der(&doc, id).unwrap(), public)
}

fn signed(user: &str, kp: &Ed25519KeyPair, value: Value) -> Value {
    let mut obj: CanonicalJsonObject =
        ruma::canonical_json::try_from_json_map(value.as_object().unwrap().clone()).unwrap();
    sign_json(user, kp, &mut obj).unwrap();
    serde_json::to_value(obj).unwrap()
}

fn cross_key(user: &str, usage: &str, public: &str) -> Value {
    json!({"user_id": user, "usage": [usage], "keys": {format!("ed25519:{public}"): public}})
}

/// A user's cross-signing key pairs and the signed keys to upload.
struct Identity {
    master: (Ed25519KeyPair, String),
    ssk: (Ed25519KeyPair, String),
    usk: (Ed25519KeyPair, String),
    body: Value,
}

fn identity(user: &str) -> Identity {
    let (master, ssk, usk) = (pair(None), pair(None), pair(None));
    let body = json!({
        "master_key": cross_key(user, "master", &master.1),
        "self_signing_key": signed(user, &master.0, cross_key(user, "self_signing", &ssk.1)),
        "user_signing_key": signed(user, &master.0, cross_key(user, "user_signing", &usk.1)),
    });
    Identity {
        master,
        ssk,
        usk,
        body,
    }
}

/// Uploads self-signed device keys of `r`'s device; returns its key pair.
fn upload_device(h: &Hearth, r: &Registered) -> (Ed25519KeyPair, Value) {
    let (kp, public) = pair(Some(&r.device));
    let keys = signed(
        &r.id,
        &kp,
        json!({
            "user_id": r.id, "device_id": r.device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{}", r.device): b64(b"curve-key-of-the-device-32bytes!"),
                     format!("ed25519:{}", r.device): public},
        }),
    );
    ok(call(
        h,
        "POST",
        "/keys/upload",
        &r.token,
        Some(json!({"device_keys": keys})),
    ));
    (kp, keys)
}

fn upload_signing(h: &Hearth, r: &Registered, body: Value) -> common::Resp {
    call(
        h,
        "POST",
        "/keys/device_signing/upload",
        &r.token,
        Some(body),
    )
}

fn query(h: &Hearth, by: &Registered, users: &[&str]) -> Value {
    let want: serde_json::Map<String, Value> =
        users.iter().map(|u| (u.to_string(), json!([]))).collect();
    ok(call(
        h,
        "POST",
        "/keys/query",
        &by.token,
        Some(json!({ "device_keys": want })),
    ))
}

fn password_auth(r: &Registered, session: &Value, pw: &str) -> Value {
    json!({"type": "m.login.password", "session": session,
           "identifier": {"type": "m.id.user", "user": r.id}, "password": pw})
}

#[test]
fn first_upload_needs_no_uia_and_a_reset_does() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let id = identity(&alice.id);

    // First upload: no master key yet, no UIA (spec v1.11, Synapse).
    ok(upload_signing(&h, &alice, id.body.clone()));
    let mine = query(&h, &alice, &[&alice.id]);
    assert_eq!(mine["master_keys"][&alice.id], id.body["master_key"]);
    assert_eq!(
        mine["self_signing_keys"][&alice.id],
        id.body["self_signing_key"]
    );
    assert_eq!(
        mine["user_signing_keys"][&alice.id],
        id.body["user_signing_key"]
    );
    // Others see the master and self-signing keys, never the user-signing key.
    let theirs = query(&h, &bob, &[&alice.id]);
    assert_eq!(theirs["master_keys"][&alice.id], id.body["master_key"]);
    assert!(theirs["self_signing_keys"].get(&alice.id).is_some());
    assert!(
        theirs["user_signing_keys"].get(&alice.id).is_none(),
        "{theirs}"
    );

    // The same keys again (a retry whose answer was lost): 200, no UIA.
    ok(upload_signing(&h, &alice, id.body.clone()));

    // New keys: UIA with the password, bound to its session.
    let new = identity(&alice.id);
    let r = upload_signing(&h, &alice, new.body.clone());
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let challenge = r.json();
    assert_eq!(challenge["flows"][0]["stages"], json!(["m.login.password"]));
    let session = challenge["session"].clone();
    let mut body = new.body.clone();
    body["auth"] = password_auth(&alice, &session, "wrong");
    let r = upload_signing(&h, &alice, body.clone());
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["errcode"], "M_FORBIDDEN");
    assert_eq!(
        query(&h, &alice, &[&alice.id])["master_keys"][&alice.id],
        id.body["master_key"],
        "nothing changed without UIA"
    );
    body["auth"] = password_auth(&alice, &session, "pw");
    ok(upload_signing(&h, &alice, body));
    let mine = query(&h, &alice, &[&alice.id]);
    assert_eq!(mine["master_keys"][&alice.id], new.body["master_key"]);
    assert_eq!(
        mine["user_signing_keys"][&alice.id],
        new.body["user_signing_key"]
    );
}

#[test]
fn bad_uploads_are_refused() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let id = identity(&alice.id);

    // A self-signing key alone, with no master key anywhere.
    let r = upload_signing(
        &h,
        &alice,
        json!({"self_signing_key": id.body["self_signing_key"]}),
    );
    assert_err(&r, 400, "M_MISSING_PARAM");
    // Not signed by the master key.
    let mut body = id.body.clone();
    body["self_signing_key"] = signed(
        &alice.id,
        &id.ssk.0,
        cross_key(&alice.id, "self_signing", &id.ssk.1),
    );
    assert_err(
        &upload_signing(&h, &alice, body),
        400,
        "M_INVALID_SIGNATURE",
    );
    // A tampered signed key.
    let mut body = id.body.clone();
    body["user_signing_key"]["usage"] = json!(["user_signing", "self_signing"]);
    assert_err(
        &upload_signing(&h, &alice, body),
        400,
        "M_INVALID_SIGNATURE",
    );
    // Someone else's keys, a wrong usage, two keys in one.
    assert_err(
        &upload_signing(&h, &bob, id.body.clone()),
        400,
        "M_INVALID_PARAM",
    );
    let mut body = id.body.clone();
    body["master_key"]["usage"] = json!(["self_signing"]);
    assert_err(&upload_signing(&h, &alice, body), 400, "M_INVALID_PARAM");
    let mut body = id.body.clone();
    body["master_key"]["keys"]["ed25519:second"] = json!("second");
    assert_err(&upload_signing(&h, &alice, body), 400, "M_INVALID_PARAM");
    // A master key named like one of the user's devices (spec: 403).
    let clash = json!({"master_key": cross_key(&alice.id, "master", &alice.device)});
    assert_err(&upload_signing(&h, &alice, clash), 403, "M_FORBIDDEN");
    // None of that stored anything: the first real upload needs no UIA.
    ok(upload_signing(&h, &alice, id.body.clone()));
    // Without a token.
    let r = common::json_request(
        &h,
        "POST",
        "/_matrix/client/v3/keys/device_signing/upload",
        None,
        Some(&id.body),
    );
    assert_eq!(r.status, 401);
}

fn upload_sigs(h: &Hearth, r: &Registered, body: Value) -> Value {
    ok(call(
        h,
        "POST",
        "/keys/signatures/upload",
        &r.token,
        Some(body),
    ))
}

/// `value` with its `signatures` replaced by one signature of `kp` as `user`.
fn only_signed_by(user: &str, kp: &Ed25519KeyPair, value: &Value) -> Value {
    let mut bare = value.clone();
    let obj = bare.as_object_mut().unwrap();
    obj.remove("signatures");
    obj.remove("unsigned");
    signed(user, kp, bare)
}

#[test]
fn signatures_are_verified_and_merged_into_queries() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let carol = common::register_user(&h, "carol");
    let (alice_dev, alice_keys) = upload_device(&h, &alice);
    let a = identity(&alice.id);
    let b = identity(&bob.id);
    ok(upload_signing(&h, &alice, a.body.clone()));
    ok(upload_signing(&h, &bob, b.body.clone()));

    // Alice signs her device with her self-signing key, her master key
    // with her device, Bob's master key with her user-signing key.
    let device_sig = only_signed_by(&alice.id, &a.ssk.0, &alice_keys);
    let master_sig = only_signed_by(&alice.id, &alice_dev, &a.body["master_key"]);
    let bob_sig = only_signed_by(&alice.id, &a.usk.0, &b.body["master_key"]);
    let v = upload_sigs(
        &h,
        &alice,
        json!({
            alice.id.clone(): {alice.device.clone(): device_sig, a.master.1.clone(): master_sig},
            bob.id.clone(): {b.master.1.clone(): bob_sig},
        }),
    );
    assert_eq!(v["failures"], json!({}), "{v}");

    let ssk_id = format!("ed25519:{}", a.ssk.1);
    let usk_id = format!("ed25519:{}", a.usk.1);
    let dev_id = format!("ed25519:{}", alice.device);
    for viewer in [&alice, &bob, &carol] {
        let q = query(&h, viewer, &[&alice.id, &bob.id]);
        let dev = &q["device_keys"][&alice.id][&alice.device];
        assert!(dev["signatures"][&alice.id][&dev_id].is_string(), "{q}");
        assert!(dev["signatures"][&alice.id][&ssk_id].is_string(), "{q}");
        let master = &q["master_keys"][&alice.id];
        assert!(master["signatures"][&alice.id][&dev_id].is_string(), "{q}");
        // Alice's signature of Bob's key is shown to Alice only.
        let on_bob = &q["master_keys"][&bob.id]["signatures"][&alice.id][&usk_id];
        assert_eq!(on_bob.is_string(), viewer.id == alice.id, "{q}");
    }

    // Failures: a forged signature, an unknown device, a stale copy of the
    // key, a key of a user without any, and a remote user.
    let (other, _) = pair(None);
    let mut forged = only_signed_by(&alice.id, &other, &alice_keys);
    let sig = forged["signatures"][&alice.id]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    forged["signatures"] = json!({alice.id.clone(): {ssk_id.clone(): sig}});
    let mut stale = alice_keys.clone();
    stale["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    let stale = only_signed_by(&alice.id, &a.ssk.0, &stale);
    let v = upload_sigs(
        &h,
        &alice,
        json!({
            alice.id.clone(): {alice.device.clone(): forged.clone(), "NOSUCHDEV": forged},
            carol.id.clone(): {"somekey": {"user_id": carol.id}},
            "@dan:elsewhere.example": {"k": {}},
        }),
    );
    let f = &v["failures"];
    assert_eq!(
        f[&alice.id][&alice.device]["errcode"], "M_INVALID_SIGNATURE",
        "{v}"
    );
    assert_eq!(f[&alice.id]["NOSUCHDEV"]["errcode"], "M_NOT_FOUND", "{v}");
    assert_eq!(f[&carol.id]["somekey"]["errcode"], "M_NOT_FOUND", "{v}");
    assert!(
        f["@dan:elsewhere.example"]["k"]["errcode"].is_string(),
        "{v}"
    );
    let v = upload_sigs(
        &h,
        &alice,
        json!({alice.id.clone(): {alice.device.clone(): stale}}),
    );
    assert_eq!(
        v["failures"][&alice.id][&alice.device]["errcode"],
        "M_INVALID_SIGNATURE"
    );
    // Carol has no user-signing key: she cannot sign Bob's key.
    let v = upload_sigs(
        &h,
        &carol,
        json!({bob.id.clone(): {b.master.1.clone(): b.body["master_key"].clone()}}),
    );
    assert!(
        v["failures"][&bob.id][&b.master.1]["errcode"].is_string(),
        "{v}"
    );
}

#[test]
fn cross_signing_changes_reach_device_lists() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(call(
        &h,
        "POST",
        &format!("/join/{}", common::enc(&room)),
        &bob.token,
        Some(json!({})),
    ));
    let since = |r: &Registered| {
        ok(call(&h, "GET", "/sync?timeout=0", &r.token, None))["next_batch"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (bob_since, alice_since) = (since(&bob), since(&alice));
    let a = identity(&alice.id);
    ok(upload_signing(&h, &alice, a.body.clone()));

    let v = ok(call(
        &h,
        "GET",
        &format!("/sync?timeout=0&since={bob_since}"),
        &bob.token,
        None,
    ));
    assert_eq!(v["device_lists"]["changed"], json!([alice.id]), "{v:#}");
    let to = v["next_batch"].as_str().unwrap().to_owned();
    let c = ok(call(
        &h,
        "GET",
        &format!("/keys/changes?from={bob_since}&to={to}"),
        &bob.token,
        None,
    ));
    assert_eq!(c["changed"], json!([alice.id]));

    // Alice's own signature of Bob's key: a change for Alice only.
    let b = identity(&bob.id);
    ok(upload_signing(&h, &bob, b.body.clone()));
    let v = ok(call(
        &h,
        "GET",
        &format!("/sync?timeout=0&since={to}"),
        &bob.token,
        None,
    ));
    let bob_after = v["next_batch"].as_str().unwrap().to_owned();
    let alice_mid = since(&alice);
    let _ = alice_since;
    let sig = only_signed_by(&alice.id, &a.usk.0, &b.body["master_key"]);
    let r = upload_sigs(
        &h,
        &alice,
        json!({bob.id.clone(): {b.master.1.clone(): sig}}),
    );
    assert_eq!(r["failures"], json!({}));
    let v = ok(call(
        &h,
        "GET",
        &format!("/sync?timeout=0&since={alice_mid}"),
        &alice.token,
        None,
    ));
    assert_eq!(v["device_lists"]["changed"], json!([bob.id]), "{v:#}");
    let v = ok(call(
        &h,
        "GET",
        &format!("/sync?timeout=0&since={bob_after}"),
        &bob.token,
        None,
    ));
    assert_eq!(v["device_lists"]["changed"], json!([]), "{v:#}");
}

#[test]
fn signatures_of_a_removed_device_are_forgotten() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let login = |device: Option<&str>| {
        let mut body = json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"});
        if let Some(d) = device {
            body["device_id"] = json!(d);
        }
        let v = ok(common::json_request(
            &h,
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(&body),
        ));
        Registered {
            token: v["access_token"].as_str().unwrap().to_owned(),
            id: alice.id.clone(),
            device: v["device_id"].as_str().unwrap().to_owned(),
        }
    };
    let phone = login(Some("PHONE"));
    let (_, keys) = upload_device(&h, &phone);
    let a = identity(&alice.id);
    ok(upload_signing(&h, &alice, a.body.clone()));
    let sig = only_signed_by(&alice.id, &a.ssk.0, &keys);
    let v = upload_sigs(&h, &alice, json!({alice.id.clone(): {"PHONE": sig}}));
    assert_eq!(v["failures"], json!({}));
    let ssk_id = format!("ed25519:{}", a.ssk.1);
    let signed_by_ssk = || {
        let q = query(&h, &alice, &[&alice.id]);
        q["device_keys"][&alice.id]["PHONE"]["signatures"][&alice.id]
            .get(&ssk_id)
            .is_some()
    };
    assert!(signed_by_ssk());

    // Logged out, then a new login reuses the device id with new keys.
    ok(call(&h, "POST", "/logout", &phone.token, Some(json!({}))));
    let again = login(Some("PHONE"));
    upload_device(&h, &again);
    assert!(!signed_by_ssk(), "an old signature shows on the new keys");
}

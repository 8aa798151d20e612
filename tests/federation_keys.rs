//! End-to-end: remote users' keys and profiles through the client API.
//! Two real hearths (A, B) federate over TLS on loopback: A's user
//! queries and claims B's user's keys and reads B's user's profile; a
//! server that is down, or too slow, is reported in `failures` within the
//! client's `timeout`; keys a remote server hands out for users it does
//! not own (or was not asked about) are dropped.

mod common;

use std::time::{Duration, Instant};

use common::fake_server::FakeServer;
use common::fed::{start_home, Home};
use common::{assert_err, call, enc, ok, register_user, Registered};
use ruma::serde::base64::Standard;
use ruma::serde::Base64;
use ruma::signatures::{sign_json, Ed25519KeyPair};
use ruma::CanonicalJsonObject;
use serde_json::{json, Value};

fn key_pair(device: &str) -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate();
    Ed25519KeyPair::from_der(&doc, device.to_owned()).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    Base64::<Standard, Vec<u8>>::new(bytes.to_vec()).encode()
}

fn signed(user: &str, kp: &Ed25519KeyPair, value: Value) -> Value {
    let mut obj: CanonicalJsonObject =
        ruma::canonical_json::try_from_json_map(value.as_object().unwrap().clone()).unwrap();
    sign_json(user, kp, &mut obj).unwrap();
    serde_json::to_value(obj).unwrap()
}

/// Uploads self-signed device keys and two one-time keys of `r`'s
/// device; returns the device keys.
fn upload_keys(home: &Home, r: &Registered) -> Value {
    let kp = key_pair(&r.device);
    let d = &r.device;
    let dk = signed(
        &r.id,
        &kp,
        json!({
            "user_id": r.id,
            "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{d}"): b64(b"curve-key-of-the-device-32bytes!"),
                format!("ed25519:{d}"): b64(&kp.public_key()),
            },
        }),
    );
    let mut otks = serde_json::Map::new();
    for id in ["AAAA", "AAAB"] {
        otks.insert(
            format!("signed_curve25519:{id}"),
            signed(&r.id, &kp, json!({"key": b64(id.as_bytes())})),
        );
    }
    let v = ok(call(
        &home.h,
        "POST",
        "/keys/upload",
        &r.token,
        Some(json!({"device_keys": dk, "one_time_keys": otks})),
    ));
    assert_eq!(v["one_time_key_counts"]["signed_curve25519"], 2);
    dk
}

#[test]
fn remote_keys_and_profiles_come_from_the_users_server() {
    let a = start_home();
    let b = start_home();
    let alice = register_user(&a.h, "alice");
    let bob = register_user(&b.h, "bob");
    let alice_keys = upload_keys(&a, &alice);
    let bob_keys = upload_keys(&b, &bob);
    ok(call(
        &b.h,
        "PUT",
        &format!("/profile/{}/displayname", enc(&bob.id)),
        &bob.token,
        Some(json!({"displayname": "Bob of B"})),
    ));

    // Query: local and remote users at once.
    let v = ok(call(
        &a.h,
        "POST",
        "/keys/query",
        &alice.token,
        Some(json!({"device_keys": {&alice.id: [], &bob.id: []}})),
    ));
    assert_eq!(v["failures"], json!({}), "{v}");
    let got = &v["device_keys"][&bob.id][&bob.device];
    assert_eq!(got["keys"], bob_keys["keys"], "{v}");
    assert_eq!(got["signatures"], bob_keys["signatures"], "{v}");
    assert_eq!(
        v["device_keys"][&alice.id][&alice.device]["keys"],
        alice_keys["keys"]
    );
    // Only the asked device.
    let v = ok(call(
        &a.h,
        "POST",
        "/keys/query",
        &alice.token,
        Some(json!({"device_keys": {&bob.id: ["NOSUCHDEVICE"]}})),
    ));
    assert_eq!(v["failures"], json!({}), "{v}");
    assert!(v["device_keys"][&bob.id]
        .as_object()
        .is_none_or(|m| m.is_empty()));

    // Claim: one key of bob's device, handed out by B once.
    let claim = |who: &Registered| {
        ok(call(
            &a.h,
            "POST",
            "/keys/claim",
            &who.token,
            Some(json!({"one_time_keys": {&bob.id: {&bob.device: "signed_curve25519"}}})),
        ))
    };
    let v = claim(&alice);
    assert_eq!(v["failures"], json!({}), "{v}");
    let keys = v["one_time_keys"][&bob.id][&bob.device]
        .as_object()
        .unwrap_or_else(|| panic!("no key claimed: {v}"))
        .clone();
    assert_eq!(keys.len(), 1);
    let first = keys.keys().next().unwrap().clone();
    assert!(first.starts_with("signed_curve25519:"), "{first}");
    let v = claim(&alice);
    let second = v["one_time_keys"][&bob.id][&bob.device]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert_ne!(first, second);
    let counts = ok(call(
        &b.h,
        "POST",
        "/keys/upload",
        &bob.token,
        Some(json!({})),
    ));
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 0);

    // A server that is down: a failure, within the timeout.
    let down = "@x:localhost:1";
    for (path, body) in [
        (
            "/keys/query",
            json!({"device_keys": {down: [], &bob.id: []}, "timeout": 5000}),
        ),
        (
            "/keys/claim",
            json!({"one_time_keys": {down: {"D": "signed_curve25519"}}, "timeout": 5000}),
        ),
    ] {
        let t = Instant::now();
        let v = ok(call(&a.h, "POST", path, &alice.token, Some(body)));
        assert!(t.elapsed() < Duration::from_secs(7), "{path} took too long");
        assert!(v["failures"]["localhost:1"].is_object(), "{path}: {v}");
        assert!(v["failures"].get(&b.name).is_none(), "{path}: {v}");
    }

    // Profiles of B's users, asked of B.
    let v = ok(call(
        &a.h,
        "GET",
        &format!("/profile/{}", enc(&bob.id)),
        &alice.token,
        None,
    ));
    assert_eq!(v["displayname"], "Bob of B", "{v}");
    let v = ok(call(
        &a.h,
        "GET",
        &format!("/profile/{}/displayname", enc(&bob.id)),
        &alice.token,
        None,
    ));
    assert_eq!(v, json!({"displayname": "Bob of B"}));
    let nobody = format!("@nobody:{}", b.name);
    let r = call(
        &a.h,
        "GET",
        &format!("/profile/{}", enc(&nobody)),
        &alice.token,
        None,
    );
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(
        &a.h,
        "GET",
        &format!("/profile/{}", enc(down)),
        &alice.token,
        None,
    );
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn remote_answers_are_trusted_only_for_the_asked_users_of_that_server() {
    let fake = FakeServer::start(41);
    let a = start_home();
    let alice = register_user(&a.h, "alice");
    let alice_keys = upload_keys(&a, &alice);
    let mallory = format!("@mallory:{}", fake.name);
    let unasked = format!("@unasked:{}", fake.name);
    let forged = json!({"user_id": alice.id, "device_id": "EVIL", "keys": {}});
    let device = |u: &str| json!({"user_id": u, "device_id": "M", "keys": {"ed25519:M": "x"}});
    let answer = json!({
        "device_keys": {
            &mallory: {"M": device(&mallory)},
            &unasked: {"M": device(&unasked)},
            &alice.id: {"EVIL": forged},
            "@eve:elsewhere.example": {"M": device("@eve:elsewhere.example")},
        },
        "master_keys": {
            &alice.id: {"user_id": alice.id, "usage": ["master"], "keys": {"ed25519:E": "E"}},
        },
        "one_time_keys": {
            &mallory: {"M": {"signed_curve25519:1": {"key": "k"}}},
            &alice.id: {"EVIL": {"signed_curve25519:1": {"key": "k"}}},
        },
    });
    fake.handle(move |r| {
        r.path
            .starts_with("/_matrix/federation/v1/user/keys/")
            .then(|| (200, answer.clone()))
    });

    let v = ok(call(
        &a.h,
        "POST",
        "/keys/query",
        &alice.token,
        Some(json!({"device_keys": {&alice.id: [], &mallory: []}})),
    ));
    assert_eq!(v["failures"], json!({}), "{v}");
    let dk = v["device_keys"].as_object().unwrap();
    assert_eq!(dk[&mallory]["M"]["user_id"], mallory.as_str());
    assert!(!dk.contains_key(&unasked), "{v}");
    assert!(!dk.contains_key("@eve:elsewhere.example"), "{v}");
    // alice's own keys are hers, not the forged ones.
    assert_eq!(
        dk[&alice.id][&alice.device]["keys"], alice_keys["keys"],
        "{v}"
    );
    assert!(dk[&alice.id].get("EVIL").is_none(), "{v}");
    assert!(v["master_keys"].get(&alice.id).is_none(), "{v}");
    let asked: Vec<_> = fake.requests("/_matrix/federation/v1/user/keys/query");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].body, json!({"device_keys": {&mallory: []}}));

    let v = ok(call(
        &a.h,
        "POST",
        "/keys/claim",
        &alice.token,
        Some(json!({"one_time_keys": {&mallory: {"M": "signed_curve25519"}}})),
    ));
    assert_eq!(v["failures"], json!({}), "{v}");
    assert_eq!(
        v["one_time_keys"],
        json!({&mallory: {"M": {"signed_curve25519:1": {"key": "k"}}}}),
        "{v}"
    );

    // A remote profile lookup refused stays refused; a remote error is a 502.
    let profile = |status: u16| {
        fake.handle(move |r| {
            r.path
                .starts_with("/_matrix/federation/v1/query/profile")
                .then(|| (status, json!({"errcode": "M_X", "error": "no"})))
        });
        call(
            &a.h,
            "GET",
            &format!("/profile/{}/displayname", enc(&mallory)),
            &alice.token,
            None,
        )
    };
    assert_err(&profile(403), 403, "M_FORBIDDEN");
    assert_eq!(profile(500).status, 502);
    assert_err(&profile(404), 404, "M_NOT_FOUND");
    let asked = fake.requests("/_matrix/federation/v1/query/profile");
    assert!(
        asked[0].path.ends_with("&field=displayname"),
        "{:?}",
        asked[0]
    );

    // Too slow for the client's timeout: a failure, not a stall.
    fake.handle(|r| {
        if r.path.starts_with("/_matrix/federation/v1/user/keys/") {
            std::thread::sleep(Duration::from_secs(5));
        }
        None
    });
    let t = Instant::now();
    let v = ok(call(
        &a.h,
        "POST",
        "/keys/query",
        &alice.token,
        Some(json!({"device_keys": {&mallory: []}, "timeout": 1000})),
    ));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(v["failures"][&fake.name].is_object(), "{v}");
}

//! End-to-end: `/keys/upload`, `/keys/query`, `/keys/claim` and the key
//! counts in `/sync`, over HTTP against the real binary (2 shards, or 1
//! under `HEARTH_TEST_SHARDS=1`) and a real PostgreSQL. Device keys are
//! signed here with ruma's ed25519, as a client's Olm account would.

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

/// Sends an `m.text` message "hi" to `room` as `user`.
fn send_text(h: &Hearth, user: &Registered, room: &str, txn: &str) {
    ok(call(
        h,
        "PUT",
        &format!("/rooms/{}/send/m.room.message/{txn}", common::enc(room)),
        &user.token,
        Some(json!({"msgtype": "m.text", "body": "hi"})),
    ));
}

fn key_pair(device: &str) -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate();
    Ed25519KeyPair::from_der(&doc, device.to_owned()).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    Base64::<Standard, Vec<u8>>::new(bytes.to_vec()).encode()
}

/// `value` signed by `kp` as `user` (its `signatures` added).
fn signed(user: &str, kp: &Ed25519KeyPair, value: Value) -> Value {
    let mut obj: CanonicalJsonObject =
        ruma::canonical_json::try_from_json_map(value.as_object().unwrap().clone()).unwrap();
    sign_json(user, kp, &mut obj).unwrap();
    serde_json::to_value(obj).unwrap()
}

/// Self-signed device keys of `r`'s device.
fn device_keys(r: &Registered, kp: &Ed25519KeyPair) -> Value {
    let d = &r.device;
    signed(
        &r.id,
        kp,
        json!({
            "user_id": r.id,
            "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{d}"): b64(b"curve-key-of-the-device-32bytes!"),
                format!("ed25519:{d}"): b64(&kp.public_key()),
            },
        }),
    )
}

fn otks(r: &Registered, kp: &Ed25519KeyPair, ids: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for id in ids {
        m.insert(
            format!("signed_curve25519:{id}"),
            signed(&r.id, kp, json!({"key": b64(id.as_bytes())})),
        );
    }
    Value::Object(m)
}

fn upload(h: &Hearth, r: &Registered, body: Value) -> common::Resp {
    call(h, "POST", "/keys/upload", &r.token, Some(body))
}

#[test]
fn upload_checks_device_keys_and_counts_one_time_keys() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let kp = key_pair(&alice.device);

    // Nothing uploaded: the count of signed_curve25519 is still there.
    let v = ok(upload(&h, &alice, json!({})));
    assert_eq!(v["one_time_key_counts"]["signed_curve25519"], 0);

    // Keys of another user, another device, unsigned, or badly signed: 400.
    let mut other_user = device_keys(&alice, &kp);
    other_user["user_id"] = json!(bob.id);
    let r = upload(&h, &alice, json!({"device_keys": other_user}));
    assert_err(&r, 400, "M_INVALID_PARAM");
    let r = upload(&h, &bob, json!({"device_keys": device_keys(&alice, &kp)}));
    assert_err(&r, 400, "M_INVALID_PARAM");
    let mut unsigned = device_keys(&alice, &kp);
    unsigned.as_object_mut().unwrap().remove("signatures");
    let r = upload(&h, &alice, json!({"device_keys": unsigned}));
    assert_err(&r, 400, "M_INVALID_PARAM");
    let mut tampered = device_keys(&alice, &kp);
    tampered["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
    let r = upload(&h, &alice, json!({"device_keys": tampered}));
    assert_err(&r, 400, "M_INVALID_PARAM");
    let other_kp = key_pair(&alice.device);
    let mut wrong_signer = device_keys(&alice, &kp);
    wrong_signer["signatures"] = device_keys(&alice, &other_kp)["signatures"].clone();
    let r = upload(&h, &alice, json!({"device_keys": wrong_signer}));
    assert_err(&r, 400, "M_INVALID_PARAM");
    let r = upload(&h, &alice, json!({"one_time_keys": {"nocolon": {}}}));
    assert_err(&r, 400, "M_INVALID_PARAM");

    // Good keys, with one-time keys; a repeated upload counts them once.
    let body = json!({
        "device_keys": device_keys(&alice, &kp),
        "one_time_keys": otks(&alice, &kp, &["AAAA", "AAAB"]),
    });
    let v = ok(upload(&h, &alice, body.clone()));
    assert_eq!(v["one_time_key_counts"]["signed_curve25519"], 2);
    let v = ok(upload(&h, &alice, body));
    assert_eq!(v["one_time_key_counts"]["signed_curve25519"], 2);
    let v = ok(upload(
        &h,
        &alice,
        json!({"one_time_keys": otks(&alice, &kp, &["AAAC"])}),
    ));
    assert_eq!(v["one_time_key_counts"]["signed_curve25519"], 3);
}

#[test]
fn query_returns_device_keys_with_display_name() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let kp = key_pair(&alice.device);
    ok(call(
        &h,
        "PUT",
        &format!("/devices/{}", alice.device),
        &alice.token,
        Some(json!({"display_name": "Alice's phone"})),
    ));
    let keys = device_keys(&alice, &kp);
    ok(upload(&h, &alice, json!({"device_keys": keys.clone()})));

    let v = ok(call(
        &h,
        "POST",
        "/keys/query",
        &bob.token,
        Some(
            json!({"device_keys": {alice.id.clone(): [], bob.id.clone(): [], "@x:elsewhere.example": []}}),
        ),
    ));
    let got = &v["device_keys"][&alice.id][&alice.device];
    assert_eq!(got["unsigned"]["device_display_name"], "Alice's phone");
    let mut without = got.clone();
    without.as_object_mut().unwrap().remove("unsigned");
    assert_eq!(without, keys, "keys come back as uploaded");
    // Bob has no keys: present, empty.
    assert_eq!(v["device_keys"][&bob.id], json!({}));
    // A remote server that cannot be reached is reported in failures.
    assert!(v["failures"]["elsewhere.example"].is_object(), "{v:#}");
    // Asking for another device only: nothing of Alice's.
    let v = ok(call(
        &h,
        "POST",
        "/keys/query",
        &bob.token,
        Some(json!({"device_keys": {alice.id.clone(): ["NOPE"]}})),
    ));
    assert_eq!(v["device_keys"][&alice.id], json!({}));
    assert_eq!(v["failures"], json!({}));
    let r = call(&h, "POST", "/keys/query", &bob.token, Some(json!({})));
    assert_err(&r, 400, "M_BAD_JSON");
}

fn claim_one(h: &Hearth, by: &Registered, of: &Registered) -> Value {
    claim_at(h.addr, by, of)
}

/// [`claim_one`] by address, for threads (a `Hearth` is not `Sync`).
fn claim_at(addr: std::net::SocketAddr, by: &Registered, of: &Registered) -> Value {
    let body = json!({"one_time_keys": {of.id.clone(): {of.device.clone(): "signed_curve25519"}}});
    ok(common::request_to(
        addr,
        "POST",
        "/_matrix/client/v3/keys/claim",
        Some(&by.token),
        body.to_string().as_bytes(),
    ))
}

#[test]
fn claim_hands_out_each_key_once_then_the_fallback() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let kp = key_pair(&alice.device);
    // No keys at all: an empty answer.
    let v = claim_one(&h, &bob, &alice);
    assert_eq!(v["one_time_keys"], json!({}));
    assert_eq!(v["failures"], json!({}));

    let fallback = signed(
        &alice.id,
        &kp,
        json!({"key": b64(b"fb1"), "fallback": true}),
    );
    ok(upload(
        &h,
        &alice,
        json!({
            "device_keys": device_keys(&alice, &kp),
            "one_time_keys": otks(&alice, &kp, &["K1", "K2"]),
            "fallback_keys": {"signed_curve25519:FB1": fallback},
        }),
    ));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let v = claim_one(&h, &bob, &alice);
        let keys = v["one_time_keys"][&alice.id][&alice.device]
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(keys.len(), 1);
        let (id, key) = keys.into_iter().next().unwrap();
        assert!(key["signatures"][&alice.id].is_object());
        seen.push(id);
    }
    seen.sort();
    assert_eq!(seen, ["signed_curve25519:K1", "signed_curve25519:K2"]);
    let v = ok(upload(&h, &alice, json!({})));
    assert_eq!(v["one_time_key_counts"]["signed_curve25519"], 0);

    // None left: the fallback key, again and again (marked used).
    for _ in 0..2 {
        let v = claim_one(&h, &bob, &alice);
        let got = &v["one_time_keys"][&alice.id][&alice.device]["signed_curve25519:FB1"];
        assert_eq!(got["fallback"], true, "{v:#}");
    }
    // A new fallback key replaces it, unused.
    let fb2 = signed(
        &alice.id,
        &kp,
        json!({"key": b64(b"fb2"), "fallback": true}),
    );
    ok(upload(
        &h,
        &alice,
        json!({"fallback_keys": {"signed_curve25519:FB2": fb2}}),
    ));
    let v = claim_one(&h, &bob, &alice);
    assert!(v["one_time_keys"][&alice.id][&alice.device]["signed_curve25519:FB2"].is_object());
}

#[test]
fn concurrent_claims_for_the_last_key_give_it_to_exactly_one() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let kp = key_pair(&alice.device);
    let claimers: Vec<Registered> = (0..8)
        .map(|i| common::register_user(&h, &format!("c{i}")))
        .collect();
    for round in 0..3 {
        let id = format!("LAST{round}");
        ok(upload(
            &h,
            &alice,
            json!({"one_time_keys": otks(&alice, &kp, &[&id])}),
        ));
        let got: Vec<Value> = std::thread::scope(|s| {
            let hs: Vec<_> = claimers
                .iter()
                .map(|c| {
                    let (addr, alice) = (h.addr, &alice);
                    s.spawn(move || claim_at(addr, c, alice))
                })
                .collect();
            hs.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let winners = got
            .iter()
            .filter(|v| v["one_time_keys"][&alice.id][&alice.device].is_object())
            .count();
        assert_eq!(winners, 1, "round {round}: {got:#?}");
    }
}

#[test]
fn sync_carries_the_devices_key_counts() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let kp = key_pair(&alice.device);
    let sync = |since: Option<&str>| {
        let path = match since {
            Some(s) => format!("/sync?timeout=0&since={s}"),
            None => "/sync?timeout=0".to_owned(),
        };
        ok(call(&h, "GET", &path, &alice.token, None))
    };
    let v = sync(None);
    assert_eq!(v["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(v["device_unused_fallback_key_types"], json!([]));
    let mut since = v["next_batch"].as_str().unwrap().to_owned();
    // Nothing changed: the cheap path leaves the counts out (unchanged).
    let v = sync(Some(&since));
    assert!(v.get("device_one_time_keys_count").is_none(), "{v:#}");
    since = v["next_batch"].as_str().unwrap().to_owned();

    let fb = signed(&alice.id, &kp, json!({"key": b64(b"fb"), "fallback": true}));
    ok(upload(
        &h,
        &alice,
        json!({
            "device_keys": device_keys(&alice, &kp),
            "one_time_keys": otks(&alice, &kp, &["A1", "A2", "A3"]),
            "fallback_keys": {"signed_curve25519:FB": fb},
        }),
    ));
    // The upload makes the next sync computed, with the real counts.
    let v = sync(Some(&since));
    assert_eq!(
        v["device_one_time_keys_count"]["signed_curve25519"], 3,
        "{v:#}"
    );
    assert_eq!(
        v["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    since = v["next_batch"].as_str().unwrap().to_owned();

    // A computed sync with no key change in between (a message in a room):
    // the counts are the remembered ones, still right.
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = sync(Some(&since));
    assert_eq!(v["device_one_time_keys_count"]["signed_curve25519"], 3);
    since = v["next_batch"].as_str().unwrap().to_owned();
    send_text(&h, &alice, &room, "k1");
    let v = sync(Some(&since));
    assert!(v["rooms"]["join"][&room].is_object(), "{v:#}");
    assert_eq!(v["device_one_time_keys_count"]["signed_curve25519"], 3);
    assert_eq!(
        v["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    since = v["next_batch"].as_str().unwrap().to_owned();

    // Another user's claim (from any shard) changes them too.
    for _ in 0..4 {
        claim_one(&h, &bob, &alice);
    }
    let v = sync(Some(&since));
    assert_eq!(
        v["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{v:#}"
    );
    assert_eq!(v["device_unused_fallback_key_types"], json!([]));
}

/// A second session of `user` (password "pw").
fn login(h: &Hearth, user: &str, id: &str) -> Registered {
    let body = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": "pw",
    });
    let v = ok(common::json_request(
        h,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(&body),
    ));
    Registered {
        token: v["access_token"].as_str().unwrap().to_owned(),
        id: id.to_owned(),
        device: v["device_id"].as_str().unwrap().to_owned(),
    }
}

#[test]
fn deleting_or_logging_out_a_device_removes_its_keys() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let second = login(&h, "alice", &alice.id);
    for r in [&alice, &second] {
        let kp = key_pair(&r.device);
        ok(upload(
            &h,
            r,
            json!({
                "device_keys": device_keys(r, &kp),
                "one_time_keys": otks(r, &kp, &["O1"]),
                "fallback_keys": {"signed_curve25519:F": signed(&r.id, &kp, json!({"key": "Zg", "fallback": true}))},
            }),
        ));
    }
    let query = || {
        ok(call(
            &h,
            "POST",
            "/keys/query",
            &bob.token,
            Some(json!({"device_keys": {alice.id.clone(): []}})),
        ))["device_keys"][&alice.id]
            .clone()
    };
    assert_eq!(query().as_object().unwrap().len(), 2);
    // Bob shares a room with Alice: he is told her device list changed.
    let room = ok(call(
        &h,
        "POST",
        "/createRoom",
        &second.token,
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
    let bob_since = ok(call(&h, "GET", "/sync?timeout=0", &bob.token, None))["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Logout removes the first device's keys...
    ok(call(&h, "POST", "/logout", &alice.token, Some(json!({}))));
    let v = ok(call(
        &h,
        "GET",
        &format!("/sync?timeout=0&since={bob_since}"),
        &bob.token,
        None,
    ));
    assert_eq!(v["device_lists"]["changed"], json!([alice.id]), "{v:#}");
    let left = query();
    assert_eq!(
        left.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&second.device]
    );
    assert_eq!(claim_one(&h, &bob, &alice)["one_time_keys"], json!({}));

    // ...and deleting the second (through UIA) removes its keys too.
    let path = format!("/devices/{}", second.device);
    let r = call(&h, "DELETE", &path, &second.token, Some(json!({})));
    assert_eq!(r.status, 401);
    let session = r.json()["session"].clone();
    ok(call(
        &h,
        "DELETE",
        &path,
        &second.token,
        Some(json!({"auth": {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "pw",
            "session": session,
        }})),
    ));
    assert_eq!(query(), json!({}));
    assert_eq!(claim_one(&h, &bob, &second)["one_time_keys"], json!({}));
}

#[test]
fn changes_lists_users_sharing_a_room_whose_keys_changed() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let carol = common::register_user(&h, "carol");
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
    let next_batch = |r: &Registered| {
        ok(call(&h, "GET", "/sync?timeout=0", &r.token, None))["next_batch"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let from = next_batch(&alice);
    for r in [&bob, &carol] {
        let kp = key_pair(&r.device);
        ok(upload(&h, r, json!({"device_keys": device_keys(r, &kp)})));
    }
    // One-time keys alone are no device list change.
    let kp = key_pair(&alice.device);
    ok(upload(
        &h,
        &alice,
        json!({"one_time_keys": otks(&alice, &kp, &["X"])}),
    ));
    // Alice's sync since then is woken and lists Bob (not Carol, not
    // herself: her one-time keys are no device list change).
    let v = ok(call(
        &h,
        "GET",
        &format!("/sync?timeout=0&since={from}"),
        &alice.token,
        None,
    ));
    assert_eq!(v["device_lists"]["changed"], json!([bob.id]), "{v:#}");
    let after = v["next_batch"].as_str().unwrap().to_owned();
    let v = ok(call(
        &h,
        "GET",
        &format!("/sync?timeout=0&since={after}"),
        &alice.token,
        None,
    ));
    assert_eq!(v["device_lists"]["changed"], json!([]), "{v:#}");
    // A long poll is woken by a room peer's new device keys.
    let addr = h.addr;
    let (tok, since) = (alice.token.clone(), after.clone());
    let poll = std::thread::spawn(move || {
        ok(common::request_to(
            addr,
            "GET",
            &format!("/_matrix/client/v3/sync?timeout=20000&since={since}"),
            Some(&tok),
            b"",
        ))
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kp2 = key_pair(&bob.device);
    ok(upload(
        &h,
        &bob,
        json!({"device_keys": device_keys(&bob, &kp2)}),
    ));
    let v = poll.join().unwrap();
    assert_eq!(v["device_lists"]["changed"], json!([bob.id]), "{v:#}");

    let to = next_batch(&alice);
    let path = format!("/keys/changes?from={from}&to={to}");
    let v = ok(call(&h, "GET", &path, &alice.token, None));
    // Bob shares a room with Alice; Carol does not.
    assert_eq!(v["changed"], json!([bob.id]), "{v:#}");
    assert_eq!(v["left"], json!([]));
    // Nothing between `to` and itself.
    let path = format!("/keys/changes?from={to}&to={to}");
    assert_eq!(
        ok(call(&h, "GET", &path, &alice.token, None))["changed"],
        json!([])
    );

    let r = call(
        &h,
        "GET",
        "/keys/changes?from=nope&to=s0.0",
        &alice.token,
        None,
    );
    assert_err(&r, 400, "M_INVALID_PARAM");
    let r = call(
        &h,
        "GET",
        &format!("/keys/changes?from={from}"),
        &alice.token,
        None,
    );
    assert_err(&r, 400, "M_MISSING_PARAM");
}

#[test]
fn device_lists_follow_who_shares_a_room() {
    let h = start();
    let alice = common::register_user(&h, "alice");
    let carol = common::register_user(&h, "carol");
    let dave = common::register_user(&h, "dave");
    let create = |r: &Registered| {
        ok(call(
            &h,
            "POST",
            "/createRoom",
            &r.token,
            Some(json!({"preset": "public_chat"})),
        ))["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (room, daves) = (create(&alice), create(&dave));
    let member = |r: &Registered, what: &str, room: &str| {
        let path = match what {
            "join" => format!("/join/{}", common::enc(room)),
            _ => format!("/rooms/{}/leave", common::enc(room)),
        };
        ok(call(&h, "POST", &path, &r.token, Some(json!({}))));
    };
    let sync = |since: &str| {
        ok(call(
            &h,
            "GET",
            &format!("/sync?timeout=0&since={since}"),
            &alice.token,
            None,
        ))
    };
    let mut since = ok(call(&h, "GET", "/sync?timeout=0", &alice.token, None))["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut step = |expect_changed: Value, expect_left: Value| {
        let v = sync(&since);
        assert_eq!(v["device_lists"]["changed"], expect_changed, "{v:#}");
        assert_eq!(v["device_lists"]["left"], expect_left, "{v:#}");
        let next = v["next_batch"].as_str().unwrap().to_owned();
        let c = ok(call(
            &h,
            "GET",
            &format!("/keys/changes?from={since}&to={next}"),
            &alice.token,
            None,
        ));
        assert_eq!(c["changed"], expect_changed);
        assert_eq!(c["left"], expect_left);
        since = next;
    };
    // Carol joins Alice's room: she newly shares one.
    member(&carol, "join", &room);
    step(json!([carol.id]), json!([]));
    // A message only: no membership in the window (the query is skipped).
    send_text(&h, &alice, &room, "t1");
    step(json!([]), json!([]));
    // Alice joins Dave's room: Dave newly shares one.
    member(&alice, "join", &daves);
    step(json!([dave.id]), json!([]));
    // Carol also joins Dave's room, then leaves Alice's: she still shares
    // Dave's room with Alice, so she is not left.
    member(&carol, "join", &daves);
    step(json!([carol.id]), json!([]));
    member(&carol, "leave", &room);
    step(json!([]), json!([]));
    // Alice leaves Dave's room: neither Dave nor Carol shares one any more.
    member(&alice, "leave", &daves);
    step(json!([]), json!([carol.id, dave.id]));
}

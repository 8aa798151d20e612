//! End-to-end: device lists and end-to-end encryption across servers. A
//! federation server of the tests' own (`common::fake_server`) is in a
//! hearth room with a local user: its users' `m.device_list_update`s
//! apply in a chain, a gap makes hearth resync with `/user/devices`, and
//! local users see the changes in `/sync`; our users' device and signing
//! key changes reach it as EDUs with a stream id chain, retried after a
//! failure; to-device messages to it survive its outage and a kill -9.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_server::FakeServer;
use common::fed::{eventually, fed_call, send_txn, sign_template, start_home_with, Home};
use common::{call, enc, ok, register_user, Hearth, Registered};
use hearth::events::RoomVersion;
use ruma::serde::base64::Standard;
use ruma::serde::Base64;
use ruma::signatures::{sign_json, Ed25519KeyPair};
use ruma::CanonicalJsonObject;
use serde_json::{json, Value};

const FAST_RETRY: [(&str, &str); 2] = [
    ("HEARTH_FEDERATION__RETRY_MIN_MS", "200"),
    ("HEARTH_FEDERATION__RETRY_MAX_MS", "1000"),
];

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_txn() -> String {
    format!(
        "t{}",
        TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

struct World {
    home: Home,
    fake: FakeServer,
    alice: Registered,
    bob: String,
    /// Whether the fake server answers `/send` (else 500).
    up: Arc<Mutex<bool>>,
    /// What the fake answers to `/user/devices/{bob}`.
    snapshot: Arc<Mutex<Value>>,
}

fn transactions(fake: &FakeServer) -> Vec<Value> {
    fake.requests("/_matrix/federation/v1/send/")
        .into_iter()
        .map(|r| r.body)
        .collect()
}

fn edus_in(txns: &[Value], kind: &str) -> Vec<Value> {
    txns.iter()
        .flat_map(|t| t["edus"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["edu_type"] == kind)
        .map(|e| e["content"].clone())
        .collect()
}

fn edus(fake: &FakeServer, kind: &str) -> Vec<Value> {
    edus_in(&transactions(fake), kind)
}

fn world() -> World {
    let home = start_home_with(&FAST_RETRY);
    let fake = FakeServer::start(21);
    let up = Arc::new(Mutex::new(true));
    let snapshot = Arc::new(Mutex::new(json!(null)));
    {
        let (up, snapshot) = (up.clone(), snapshot.clone());
        fake.handle(move |r| {
            if r.path.starts_with("/_matrix/federation/v1/send/") {
                return Some(if *up.lock().unwrap() {
                    (200, json!({"pdus": {}}))
                } else {
                    (500, json!({"errcode": "M_UNKNOWN", "error": "down"}))
                });
            }
            if r.path.starts_with("/_matrix/federation/v1/user/devices/") {
                return Some((200, snapshot.lock().unwrap().clone()));
            }
            if r.path.starts_with("/_matrix/federation/v1/user/keys/query") {
                // The cache must answer when it is up to date.
                return Some((500, json!({"errcode": "M_UNKNOWN", "error": "no"})));
            }
            None
        });
    }
    let alice = register_user(&home.h, "alice");
    let room = ok(call(
        &home.h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat", "room_version": "12"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = format!("@bob:{}", fake.name);
    let (status, made) = fed_call(
        &home,
        &fake,
        "GET",
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12",
            enc(&room),
            enc(&bob)
        ),
        None,
    );
    assert_eq!(status, 200, "{made}");
    let (id, ev) = sign_template(&fake, &made["event"], RoomVersion::V12);
    let (status, answer) = fed_call(
        &home,
        &fake,
        "PUT",
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            enc(&room),
            enc(&id)
        ),
        Some(ev),
    );
    assert_eq!(status, 200, "{answer}");
    World {
        home,
        fake,
        alice,
        bob,
        up,
        snapshot,
    }
}

fn b64(bytes: &[u8]) -> String {
    Base64::<Standard, Vec<u8>>::new(bytes.to_vec()).encode()
}

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

/// Self-signed device keys of `user`'s `device`.
fn device_keys(user: &str, device: &str) -> Value {
    let (kp, public) = pair(Some(device));
    signed(
        user,
        &kp,
        json!({
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{device}"): b64(b"curve-key-of-the-device-32bytes!"),
                     format!("ed25519:{device}"): public},
        }),
    )
}

fn cross_key(user: &str, usage: &str, public: &str) -> Value {
    json!({"user_id": user, "usage": [usage], "keys": {format!("ed25519:{public}"): public}})
}

fn sync(home: &Home, r: &Registered, since: Option<&str>) -> Value {
    let path = match since {
        Some(s) => format!("/sync?timeout=0&since={}", enc(s)),
        None => "/sync?timeout=0".to_owned(),
    };
    ok(call(&home.h, "GET", &path, &r.token, None))
}

fn query(w: &World) -> Value {
    ok(call(
        &w.home.h,
        "POST",
        "/keys/query",
        &w.alice.token,
        Some(json!({"device_keys": {&w.bob: []}})),
    ))
}

fn device_update(w: &World, device: &str, stream: i64, prev: &[i64]) -> Value {
    json!({"edu_type": "m.device_list_update", "content": {
        "user_id": w.bob, "device_id": device, "stream_id": stream, "prev_id": prev,
        "deleted": false, "keys": device_keys(&w.bob, device),
        "device_display_name": format!("{device}'s name"),
    }})
}

fn send_edu(w: &World, edu: Value) {
    let (status, body) = send_txn(&w.home, &w.fake, &next_txn(), &[], &[edu]);
    assert_eq!(status, 200, "{body}");
}

fn resyncs(w: &World) -> usize {
    w.fake
        .requests("/_matrix/federation/v1/user/devices/")
        .len()
}

/// Waits until alice's sync after `since` lists bob as changed; returns
/// the next token.
fn sees_bob_changed(w: &World, since: &str) -> String {
    let mut since = since.to_owned();
    let mut seen = false;
    eventually("bob in device_lists.changed", || {
        let v = sync(&w.home, &w.alice, Some(&since));
        since = v["next_batch"].as_str().unwrap().to_owned();
        seen = v["device_lists"]["changed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == &w.bob));
        seen
    });
    since
}

#[test]
fn remote_device_lists_chain_resync_on_gaps_and_reach_sync() {
    let w = world();
    let since = sync(&w.home, &w.alice, None)["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    // First update of a user we do not track: resync.
    let d1 = device_keys(&w.bob, "BOB1");
    *w.snapshot.lock().unwrap() = json!({"user_id": w.bob, "stream_id": 5, "devices": [
        {"device_id": "BOB1", "keys": d1, "device_display_name": "one"}]});
    send_edu(&w, device_update(&w, "BOB0", 3, &[2]));
    let since = sees_bob_changed(&w, &since);
    assert_eq!(resyncs(&w), 1);
    // The cache holds the snapshot (bob's server refuses /user/keys/query).
    let v = query(&w);
    assert_eq!(v["failures"], json!({}), "{v}");
    assert_eq!(v["device_keys"][&w.bob]["BOB1"]["keys"], d1["keys"], "{v}");
    assert_eq!(
        v["device_keys"][&w.bob]["BOB1"]["unsigned"]["device_display_name"],
        "one"
    );
    assert!(v["device_keys"][&w.bob].get("BOB0").is_none(), "{v}");

    // A chained update applies without a resync.
    let chained = device_update(&w, "BOB2", 6, &[5]);
    send_edu(&w, chained.clone());
    let since = sees_bob_changed(&w, &since);
    assert_eq!(resyncs(&w), 1);
    let v = query(&w);
    assert_eq!(
        v["device_keys"][&w.bob]["BOB2"]["keys"], chained["content"]["keys"]["keys"],
        "{v}"
    );
    assert!(v["device_keys"][&w.bob].get("BOB1").is_some());

    // A gap (prev_id 8 never seen): resync, the cache is the new answer.
    let d3 = device_keys(&w.bob, "BOB3");
    *w.snapshot.lock().unwrap() = json!({"user_id": w.bob, "stream_id": 9, "devices": [
        {"device_id": "BOB3", "keys": d3}]});
    send_edu(&w, device_update(&w, "BOB3", 9, &[8]));
    let since = sees_bob_changed(&w, &since);
    assert_eq!(resyncs(&w), 2);
    let v = query(&w);
    let devices = v["device_keys"][&w.bob].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), vec!["BOB3"], "{v}");

    // Signing keys in: the cache holds them.
    let (master, mpub) = pair(None);
    let (_, spub) = pair(None);
    let mk = cross_key(&w.bob, "master", &mpub);
    let ssk = signed(&w.bob, &master, cross_key(&w.bob, "self_signing", &spub));
    send_edu(
        &w,
        json!({"edu_type": "m.signing_key_update", "content": {
            "user_id": w.bob, "master_key": mk, "self_signing_key": ssk}}),
    );
    sees_bob_changed(&w, &since);
    let v = query(&w);
    assert_eq!(v["master_keys"][&w.bob], mk, "{v}");
    assert_eq!(v["self_signing_keys"][&w.bob], ssk, "{v}");
    assert_eq!(resyncs(&w), 2);
}

#[test]
fn local_device_changes_reach_the_rooms_servers_reliably() {
    let w = world();
    let up = |b: bool| *w.up.lock().unwrap() = b;
    // Keys uploaded: stream 1.
    let keys = device_keys(&w.alice.id, &w.alice.device);
    ok(call(
        &w.home.h,
        "POST",
        "/keys/upload",
        &w.alice.token,
        Some(json!({"device_keys": keys})),
    ));
    eventually("device list update", || {
        !edus(&w.fake, "m.device_list_update").is_empty()
    });
    let u = &edus(&w.fake, "m.device_list_update")[0];
    assert_eq!(u["user_id"], w.alice.id);
    assert_eq!(u["device_id"], w.alice.device);
    assert_eq!(u["stream_id"], 1);
    assert_eq!(u["prev_id"], json!([]));
    assert_eq!(u["deleted"], false);
    assert_eq!(u["keys"], keys);

    // While the fake fails: a new device (login), stream 2 after 1.
    up(false);
    let before = transactions(&w.fake).len();
    let login = ok(common::json_request(
        &w.home.h,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(&json!({"type": "m.login.password", "user": "alice",
                    "password": "pw", "device_id": "PHONE"})),
    ));
    assert_eq!(login["device_id"], "PHONE");
    let is_phone = |e: &Value| e["device_id"] == "PHONE" && e["stream_id"] == 2;
    eventually("retried after a 500", || {
        let t = transactions(&w.fake).split_off(before);
        edus_in(&t, "m.device_list_update")
            .iter()
            .filter(|e| is_phone(e))
            .count()
            >= 2
    });
    up(true);
    let after_up = transactions(&w.fake).len();
    eventually("sent once more and answered", || {
        let t = transactions(&w.fake).split_off(after_up);
        edus_in(&t, "m.device_list_update").iter().any(is_phone)
    });
    let u = edus(&w.fake, "m.device_list_update")
        .into_iter()
        .find(|e| is_phone(e))
        .unwrap();
    assert_eq!(u["prev_id"], json!([1]));
    assert_eq!(u["deleted"], false);
    // Answered 200: not sent again.
    std::thread::sleep(Duration::from_millis(1500));
    let t = transactions(&w.fake).split_off(after_up);
    let n = edus_in(&t, "m.device_list_update")
        .iter()
        .filter(|e| is_phone(e))
        .count();
    assert_eq!(n, 1, "{t:?}");

    // /user/devices agrees on the stream id.
    let (status, devices) = fed_call(
        &w.home,
        &w.fake,
        "GET",
        &format!("/_matrix/federation/v1/user/devices/{}", enc(&w.alice.id)),
        None,
    );
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["stream_id"], 2, "{devices}");

    // The device deleted: stream 3, deleted.
    let phone = login["access_token"].as_str().unwrap().to_owned();
    ok(call(&w.home.h, "POST", "/logout", &phone, Some(json!({}))));
    eventually("deletion sent", || {
        edus(&w.fake, "m.device_list_update")
            .iter()
            .any(|e| e["stream_id"] == 3 && e["deleted"] == true && e["prev_id"] == json!([2]))
    });

    // Cross-signing keys: an m.signing_key_update.
    let (master, mpub) = pair(None);
    let (_, spub) = pair(None);
    let (_, upub) = pair(None);
    let a = &w.alice.id;
    let body = json!({
        "master_key": cross_key(a, "master", &mpub),
        "self_signing_key": signed(a, &master, cross_key(a, "self_signing", &spub)),
        "user_signing_key": signed(a, &master, cross_key(a, "user_signing", &upub)),
    });
    ok(call(
        &w.home.h,
        "POST",
        "/keys/device_signing/upload",
        &w.alice.token,
        Some(body.clone()),
    ));
    eventually("signing key update", || {
        !edus(&w.fake, "m.signing_key_update").is_empty()
    });
    let s = &edus(&w.fake, "m.signing_key_update")[0];
    assert_eq!(s["user_id"], w.alice.id);
    assert_eq!(s["master_key"], body["master_key"]);
    assert_eq!(s["self_signing_key"], body["self_signing_key"]);
    assert!(s.get("user_signing_key").is_none(), "{s}");
}

#[test]
fn to_device_for_a_down_server_survives_a_kill() {
    let mut w = world();
    *w.up.lock().unwrap() = false;
    ok(call(
        &w.home.h,
        "PUT",
        "/sendToDevice/m.test/durable-1",
        &w.alice.token,
        Some(json!({"messages": {w.bob.clone(): {"BOBDEV": {"secret": 42}}}})),
    ));
    eventually("hearth tried", || {
        !edus(&w.fake, "m.direct_to_device").is_empty()
    });
    w.home.h.signal(libc::SIGKILL);
    w.home.h.wait_exit(Duration::from_secs(30));
    let before = transactions(&w.fake).len();
    *w.up.lock().unwrap() = true;
    let dir = std::mem::replace(&mut w.home.h.data_dir, tempfile::tempdir().unwrap());
    w.home.h = Hearth::start_in(w.home.opts.clone(), dir);
    eventually("delivered after the restart", || {
        let t = transactions(&w.fake).split_off(before);
        edus_in(&t, "m.direct_to_device").iter().any(|e| {
            e["message_id"] == "durable-1" && e["messages"][&w.bob]["BOBDEV"]["secret"] == 42
        })
    });
}

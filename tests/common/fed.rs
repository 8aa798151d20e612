//! Federation test helpers: a hearth with a TLS federation listener on
//! loopback (`Home`), a federation client signing as a fake server, PDUs
//! built and signed by the fake server, and polling for what is applied
//! after a transaction's answer.
#![allow(dead_code)]

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth::config::FederationSection;
use hearth::db::testing::TestCluster;
use hearth::events::{build_pdu, NewEvent, RoomVersion};
use hearth::federation::Federation;
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{json, Value};

use super::fake_server::FakeServer;
use super::{call, enc, ok, Hearth, Opts, Registered};

pub fn write_cert(dir: &Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let c = dir.join("fed.crt");
    let k = dir.join("fed.key");
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

pub fn free_port() -> u16 {
    // Outside the kernel's ephemeral range (32768–60999 by default): a
    // port freed by a killed server is not handed to another test's
    // `bind(0)` before the server restarts on it ("Address already in
    // use"). Randomised so parallel tests rarely try the same one.
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = (seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let port = 20_000 + (x >> 40) as u16 % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// hearth under test: `localhost:<port>`, may federate over loopback.
pub struct Home {
    pub h: Hearth,
    pub name: String,
    pub opts: Opts,
    _certs: tempfile::TempDir,
}

pub fn start_home() -> Home {
    start_home_with(&[])
}

/// [`start_home`] with extra environment (`HEARTH_…` settings).
pub fn start_home_with(extra: &[(&str, &str)]) -> Home {
    let db_url = TestCluster::shared().fresh_database().url();
    let port = free_port();
    let name = format!("localhost:{port}");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(certs.path());
    let opts = Opts::shards(2)
        .env("HEARTH_DATABASE__URL", &db_url)
        .env("HEARTH_SERVER_NAME", &name)
        .env("HEARTH_LISTENERS__1__ADDRESS", "127.0.0.1")
        .env("HEARTH_LISTENERS__1__PORT", &port.to_string())
        .env("HEARTH_LISTENERS__1__KIND", "federation")
        .env("HEARTH_LISTENERS__1__TLS_CERTIFICATE", &cert)
        .env("HEARTH_LISTENERS__1__TLS_PRIVATE_KEY", &key)
        .env("HEARTH_FEDERATION__ALLOW_IP_RANGES", r#"["127.0.0.0/8"]"#)
        .env("HEARTH_FEDERATION__VERIFY_PEER_TLS", "false");
    let opts = extra.iter().fold(opts, |o, (k, v)| o.env(k, v));
    let h = Hearth::start(opts.clone());
    Home {
        h,
        name,
        opts,
        _certs: certs,
    }
}

pub fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

/// A federation client signing as the fake server.
pub fn client_of(fake: &FakeServer) -> Rc<Federation> {
    let cfg = FederationSection {
        allow_ip_ranges: vec!["127.0.0.0/8".into()],
        verify_peer_tls: false,
        ..FederationSection::default()
    };
    let tls = hearth::federation::tls::client_config(false).unwrap();
    Rc::new(Federation::new(
        fake.key.clone(),
        Arc::new(Vec::new()),
        tls,
        &cfg,
        Vec::new(),
    ))
}

/// `PUT /send/{txn}` signed by the fake server: (status, body).
pub fn send_txn(
    home: &Home,
    fake: &FakeServer,
    txn: &str,
    pdus: &[Value],
    edus: &[Value],
) -> (u16, Value) {
    let fed = client_of(fake);
    let body = json!({
        "origin": fake.name,
        "origin_server_ts": now(),
        "pdus": pdus,
        "edus": edus,
    });
    runtime().block_on(async {
        let r = fed
            .request(
                &home.name,
                "PUT",
                &format!("/_matrix/federation/v1/send/{txn}"),
                Some(&body),
            )
            .await
            .unwrap();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    })
}

pub fn now() -> u64 {
    hearth::primitives::unix_ms()
}

/// The room's state as alice sees it.
pub fn state(home: &Home, alice: &Registered, room: &str) -> Vec<Value> {
    ok(call(
        &home.h,
        "GET",
        &format!("/rooms/{room}/state"),
        &alice.token,
        None,
    ))
    .as_array()
    .unwrap()
    .clone()
}

/// The newest event id of the room.
pub fn latest(home: &Home, alice: &Registered, room: &str) -> String {
    let v = ok(call(
        &home.h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=1"),
        &alice.token,
        None,
    ));
    v["chunk"][0]["event_id"].as_str().unwrap().to_owned()
}

/// A PDU of `room` (v12) by `sender`, signed by the fake server, with
/// auth events picked from `state`.
#[allow(clippy::too_many_arguments)]
pub fn pdu(
    fake: &FakeServer,
    room: &str,
    state: &[Value],
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    prev: &[&str],
    auth_extra: &[&str],
) -> (String, Value) {
    pdu_at(
        fake, room, state, sender, kind, state_key, content, prev, auth_extra, 100,
    )
}

/// [`pdu`] with its `depth` (where the tests' topological order matters).
#[allow(clippy::too_many_arguments, dead_code)]
pub fn pdu_at(
    fake: &FakeServer,
    room: &str,
    state: &[Value],
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    prev: &[&str],
    auth_extra: &[&str],
    depth: u64,
) -> (String, Value) {
    let find = |t: &str, k: &str| {
        state
            .iter()
            .find(|e| e["type"] == t && e["state_key"] == k)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
    };
    let mut auth: Vec<String> = auth_extra.iter().map(|s| s.to_string()).collect();
    auth.extend(find("m.room.power_levels", ""));
    auth.extend(find("m.room.member", sender));
    if kind == "m.room.member" {
        auth.extend(find("m.room.join_rules", ""));
    }
    auth.sort();
    auth.dedup();
    let Value::Object(c) = content else { panic!() };
    let content: CanonicalJsonObject = ruma::canonical_json::try_from_json_map(c).unwrap();
    let signed = build_pdu(
        NewEvent {
            room_version: RoomVersion::V12,
            room_id: Some(room.try_into().unwrap()),
            sender: sender.try_into().unwrap(),
            event_type: kind.into(),
            state_key: state_key.map(Into::into),
            content,
            prev_events: prev.iter().map(|p| (*p).try_into().unwrap()).collect(),
            auth_events: auth
                .iter()
                .map(|a| a.as_str().try_into().unwrap())
                .collect(),
            depth,
            origin_server_ts: now(),
            redacts: None,
        },
        &fake.key,
    )
    .unwrap();
    (
        signed.event_id.to_string(),
        serde_json::to_value(&signed.pdu).unwrap(),
    )
}

/// The event id hearth computes for `pdu` (v12).
pub fn id_of(pdu: &Value) -> String {
    let Value::Object(m) = pdu.clone() else {
        panic!()
    };
    let obj = ruma::canonical_json::try_from_json_map(m).unwrap();
    hearth::events::event_id_of(&obj, RoomVersion::V12)
        .unwrap()
        .to_string()
}

/// Polls `f` until it holds (staged PDUs are applied after the answer).
#[track_caller]
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

pub fn event_visible(home: &Home, alice: &Registered, room: &str, id: &str) -> bool {
    call(
        &home.h,
        "GET",
        &format!("/rooms/{room}/event/{}", enc(id)),
        &alice.token,
        None,
    )
    .status
        == 200
}

pub fn membership(home: &Home, alice: &Registered, room: &str, user: &str) -> Option<String> {
    state(home, alice, room)
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
        .map(|e| e["content"]["membership"].as_str().unwrap().to_owned())
}

/// A request signed by the fake server to hearth: (status, JSON body).
pub fn fed_call(
    home: &Home,
    fake: &FakeServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let fed = client_of(fake);
    runtime().block_on(async {
        let r = fed
            .request(&home.name, method, path, body.as_ref())
            .await
            .unwrap();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    })
}

/// A template from `make_*` completed as the joining server does: hashed
/// and signed by the fake server. Returns (event id, event).
pub fn sign_template(fake: &FakeServer, template: &Value, version: RoomVersion) -> (String, Value) {
    let Value::Object(m) = template.clone() else {
        panic!("template is not an object: {template}")
    };
    let mut obj = ruma::canonical_json::try_from_json_map(m).unwrap();
    hearth::events::hash_and_sign(&mut obj, version, &fake.key).unwrap();
    let id = hearth::events::event_id_of(&obj, version)
        .unwrap()
        .to_string();
    (id, serde_json::to_value(&obj).unwrap())
}

//! End-to-end: other servers reading hearth's rooms over federation
//! (server-server "Retrieving events", "Backfilling and retrieving missing
//! events", "Room State", "Event Auth", `timestamp_to_event`). Server B
//! holds the room; `@bob:A` joins it through B's test door (a PDU signed
//! with A's real key); requests signed as A (a federation client in this
//! process with A's key, checked by B against A's listener) read it. A
//! server C with no member is refused, unsigned requests get 401, and
//! `history_visibility: joined` serves A the events before bob's join
//! redacted.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use common::{call, enc, json_request, ok, register_user, Hearth, Opts};
use hearth::config::FederationSection;
use hearth::db::testing::TestCluster;
use hearth::events::{build_pdu, event_id_of, NewEvent, RoomVersion, ServerKey};
use hearth::federation::Federation;
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{json, Value};

/// A self-signed certificate for `localhost` / 127.0.0.1 in `dir`.
fn write_cert(dir: &Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let c = dir.join("fed.crt");
    let k = dir.join("fed.key");
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hearth named `localhost:<port>` with a TLS federation listener there.
struct FedServer {
    h: Hearth,
    name: String,
    _certs: tempfile::TempDir,
}

fn start_fed(extra: &[(&str, &str)]) -> FedServer {
    let db_url = TestCluster::shared().fresh_database().url();
    let port = free_port();
    let name = format!("localhost:{port}");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(certs.path());
    let mut o = Opts::shards(2)
        .env("HEARTH_DATABASE__URL", &db_url)
        .env("HEARTH_SERVER_NAME", &name)
        .env("HEARTH_LISTENERS__1__ADDRESS", "127.0.0.1")
        .env("HEARTH_LISTENERS__1__PORT", &port.to_string())
        .env("HEARTH_LISTENERS__1__KIND", "federation")
        .env("HEARTH_LISTENERS__1__TLS_CERTIFICATE", &cert)
        .env("HEARTH_LISTENERS__1__TLS_PRIVATE_KEY", &key)
        .env(
            "HEARTH_FEDERATION__ALLOW_IP_RANGES",
            r#"["127.0.0.0/8", "::1/128"]"#,
        )
        .env("HEARTH_FEDERATION__VERIFY_PEER_TLS", "false");
    for (k, v) in extra {
        o = o.env(k, v);
    }
    FedServer {
        h: Hearth::start(o),
        name,
        _certs: certs,
    }
}

impl FedServer {
    fn key(&self) -> ServerKey {
        ServerKey::load_or_create(self.h.data_dir.path(), &self.name).unwrap()
    }
}

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

thread_local! {
    /// One runtime per test thread: the federation client pools its
    /// connections, and a connection registered with one runtime's driver
    /// cannot be polled by another ("scheduled_io lost").
    static RT: std::cell::RefCell<Runtime> = std::cell::RefCell::new(
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap(),
    );
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    RT.with(|rt| rt.borrow_mut().block_on(f))
}

/// A federation client in this process, signing as `key`.
fn client(key: ServerKey) -> Rc<Federation> {
    let cfg = FederationSection {
        allow_ip_ranges: vec!["127.0.0.0/8".into(), "::1/128".into()],
        verify_peer_tls: false,
        ..FederationSection::default()
    };
    let tls = hearth::federation::tls::client_config(cfg.verify_peer_tls).unwrap();
    Rc::new(Federation::new(
        Arc::new(key),
        Arc::new(Vec::new()),
        tls,
        &cfg,
        Vec::new(),
    ))
}

/// A signed request from `fed` to `to`: `(status, body)`.
fn signed(
    fed: &Federation,
    to: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    block_on(async {
        let r = fed.request(to, method, path, body.as_ref()).await.unwrap();
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    })
}

/// An unsigned request: its status.
fn unsigned(fed: &Federation, to: &str, method: &str, path: &str) -> u16 {
    block_on(async {
        let body = (method == "POST").then_some(&b"{}"[..]);
        fed.send_raw(to, method, path, &[], body, 1 << 20)
            .await
            .unwrap()
            .status
    })
}

/// The 200 body of a signed request.
#[track_caller]
fn get_ok(fed: &Federation, to: &str, path: &str) -> Value {
    let (status, v) = signed(fed, to, "GET", path, None);
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// The event id of a federation-format PDU (rooms v12).
fn id_of(pdu: &Value) -> String {
    let Value::Object(m) = pdu.clone() else {
        panic!("not a PDU: {pdu}")
    };
    let obj: CanonicalJsonObject = ruma::canonical_json::try_from_json_map(m).unwrap();
    event_id_of(&obj, RoomVersion::V12).unwrap().to_string()
}

fn ids(pdus: &Value) -> Vec<String> {
    pdus.as_array().unwrap().iter().map(id_of).collect()
}

fn set(v: &[String]) -> HashSet<String> {
    v.iter().cloned().collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn client_state(h: &Hearth, token: &str, room: &str) -> Vec<Value> {
    ok(call(h, "GET", &format!("/rooms/{room}/state"), token, None))
        .as_array()
        .unwrap()
        .clone()
}

fn latest(h: &Hearth, token: &str, room: &str) -> String {
    let v = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=1"),
        token,
        None,
    ));
    v["chunk"][0]["event_id"].as_str().unwrap().to_owned()
}

/// Every event id of the room, oldest first (client `/messages`).
fn all_events(h: &Hearth, token: &str, room: &str) -> Vec<String> {
    let v = ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/messages?dir=f&limit=1000"),
        token,
        None,
    ));
    v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn send(h: &Hearth, token: &str, room: &str, body: &str) -> String {
    let path = format!("/rooms/{room}/send/m.room.message/{body}");
    ok(call(
        h,
        "PUT",
        &path,
        token,
        Some(json!({"msgtype": "m.text", "body": body})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn put_state(h: &Hearth, token: &str, room: &str, ty: &str, content: Value) -> String {
    let path = format!("/rooms/{room}/state/{ty}/");
    ok(call(h, "PUT", &path, token, Some(content)))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `user` (of server `a`) joins B's `room` through B's test door, the PDU
/// signed with A's key; returns the join's event id.
fn remote_join(b: &FedServer, token: &str, a: &FedServer, room: &str, user: &str) -> String {
    let st = client_state(&b.h, token, room);
    let find = |t: &str, k: &str| {
        st.iter()
            .find(|e| e["type"] == t && e["state_key"] == k)
            .map(|e| e["event_id"].as_str().unwrap().try_into().unwrap())
    };
    let mut auth: Vec<ruma::OwnedEventId> = Vec::new();
    auth.extend(find("m.room.power_levels", ""));
    auth.extend(find("m.room.join_rules", ""));
    auth.extend(find("m.room.member", user));
    let key = a.key();
    let Value::Object(c) = json!({"membership": "join"}) else {
        unreachable!()
    };
    let signed = build_pdu(
        NewEvent {
            room_version: RoomVersion::V12,
            room_id: Some(room.try_into().unwrap()),
            sender: user.try_into().unwrap(),
            event_type: "m.room.member".into(),
            state_key: Some(user.into()),
            content: ruma::canonical_json::try_from_json_map(c).unwrap(),
            prev_events: vec![latest(&b.h, token, room).as_str().try_into().unwrap()],
            auth_events: auth,
            // History is linear here: one more than the events so far.
            depth: all_events(&b.h, token, room).len() as u64 + 1,
            origin_server_ts: now(),
            redacts: None,
        },
        &key,
    )
    .unwrap();
    let body = json!({
        "key": {
            "server": a.name,
            "key_id": key.key_id.to_string(),
            "public_key": key.public_key_base64(),
        },
        "room_id": room,
        "pdu": serde_json::to_value(&signed.pdu).unwrap(),
    });
    let out = ok(json_request(
        &b.h,
        "POST",
        "/_hearth/test/pdu",
        Some(token),
        Some(&body),
    ));
    assert_eq!(out["outcome"], "accepted", "{out}");
    signed.event_id.to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn create_room(h: &Hearth, token: &str, extra: Value) -> String {
    let mut body = json!({"preset": "public_chat"});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    ok(call(h, "POST", "/createRoom", token, Some(body)))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every `auth_events` entry of `events` is among `chain`'s ids.
#[track_caller]
fn assert_closed(events: &[&Value], chain: &HashSet<String>) {
    for e in events {
        for a in strings(&e["auth_events"]) {
            assert!(chain.contains(&a), "auth event {a} of {e} missing");
        }
    }
}

#[test]
fn servers_in_the_room_read_it_over_federation() {
    let a = start_fed(&[]);
    let b = start_fed(&[("HEARTHTEST_INJECT_PDUS", "1")]);
    let c = start_fed(&[]);
    let alice = register_user(&b.h, "alice");
    let t = alice.token.as_str();
    let room = create_room(&b.h, t, json!({"topic": "first"}));
    let m1 = send(&b.h, t, &room, "m1");
    let bob = format!("@bob:{}", a.name);
    let join = remote_join(&b, t, &a, &room, &bob);
    let m2 = send(&b.h, t, &room, "m2");
    let topic = put_state(&b.h, t, &room, "m.room.topic", json!({"topic": "second"}));
    let m3 = send(&b.h, t, &room, "m3");
    let everything = all_events(&b.h, t, &room);
    let state_now: Vec<String> = client_state(&b.h, t, &room)
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let alice_member = client_state(&b.h, t, &room)
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.id.as_str())
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .unwrap();
    let as_a = client(a.key());
    let as_c = client(c.key());
    let r = enc(&room);
    let fed = "/_matrix/federation/v1";

    // /state_ids at a message: the state then (= now), with a closed chain.
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/state_ids/{r}?event_id={}", enc(&m3)),
    );
    let pdu_ids = strings(&v["pdu_ids"]);
    assert_eq!(set(&pdu_ids), set(&state_now), "{v}");
    assert!(pdu_ids.contains(&join) && pdu_ids.contains(&topic));
    let chain_ids = set(&strings(&v["auth_chain_ids"]));
    assert!(chain_ids.contains(&alice_member), "{v}");
    // /state: the same as full PDUs; the auth chain is closed.
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/state/{r}?event_id={}", enc(&m3)),
    );
    assert_eq!(set(&ids(&v["pdus"])), set(&state_now));
    assert_eq!(set(&ids(&v["auth_chain"])), chain_ids);
    let all: Vec<&Value> = v["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["auth_chain"].as_array().unwrap())
        .collect();
    assert_closed(&all, &chain_ids);
    assert!(all
        .iter()
        .all(|e| e["signatures"].is_object() && e["hashes"].is_object()));

    // At the topic change: the state *before* it holds the first topic.
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/state/{r}?event_id={}", enc(&topic)),
    );
    let pdus = v["pdus"].as_array().unwrap();
    let topics: Vec<&Value> = pdus
        .iter()
        .filter(|e| e["type"] == "m.room.topic")
        .collect();
    assert_eq!(topics.len(), 1, "{v}");
    assert_eq!(topics[0]["content"]["topic"], "first");
    assert!(!ids(&v["pdus"]).contains(&topic));
    assert_eq!(pdus.len(), state_now.len());
    // Before bob's join, bob is not in the state.
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/state_ids/{r}?event_id={}", enc(&join)),
    );
    assert!(!strings(&v["pdu_ids"]).contains(&join));
    assert_eq!(strings(&v["pdu_ids"]).len(), state_now.len() - 1);

    // /event: one PDU in a transaction from B.
    let v = get_ok(&as_a, &b.name, &format!("{fed}/event/{}", enc(&m2)));
    assert_eq!(v["origin"], b.name.as_str());
    assert!(v["origin_server_ts"].as_u64().unwrap() > 0);
    assert_eq!(v["pdus"][0]["content"]["body"], "m2");
    assert_eq!(id_of(&v["pdus"][0]), m2);

    // /event_auth: the event's auth chain, closed, without the event.
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/event_auth/{r}/{}", enc(&m2)),
    );
    let chain: Vec<&Value> = v["auth_chain"].as_array().unwrap().iter().collect();
    let chain_ids = set(&ids(&v["auth_chain"]));
    assert!(!chain_ids.contains(&m2) && chain_ids.contains(&alice_member));
    let ev = get_ok(&as_a, &b.name, &format!("{fed}/event/{}", enc(&m2)));
    assert_closed(&[&ev["pdus"][0]], &chain_ids);
    assert_closed(&chain, &chain_ids);

    // /backfill: from m3 back, deepest first, the seed included.
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/backfill/{r}?v={}&limit=3", enc(&m3)),
    );
    assert_eq!(v["origin"], b.name.as_str());
    assert_eq!(ids(&v["pdus"]), vec![m3.clone(), topic.clone(), m2.clone()]);
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/backfill/{r}?v={}&limit=1000", enc(&m3)),
    );
    let mut back = ids(&v["pdus"]);
    back.reverse();
    assert_eq!(back, everything, "the whole room, capped at 100");
    let depths: Vec<u64> = v["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    assert!(depths.windows(2).all(|w| w[0] > w[1]), "{depths:?}");
    // Two seeds (repeated `v`), from the middle.
    let q = format!("v={}&v={}&limit=2", enc(&m2), enc(&m1));
    let v = get_ok(&as_a, &b.name, &format!("{fed}/backfill/{r}?{q}"));
    assert_eq!(ids(&v["pdus"]), vec![m2.clone(), join.clone()]);

    // /get_missing_events: back from m3, stopping at m1, oldest first.
    let missing = |body: Value| {
        let (s, v) = signed(
            &as_a,
            &b.name,
            "POST",
            &format!("{fed}/get_missing_events/{r}"),
            Some(body),
        );
        assert_eq!(s, 200, "{v}");
        ids(&v["events"])
    };
    let got = missing(json!({"earliest_events": [m1], "latest_events": [m3]}));
    assert_eq!(got, vec![join.clone(), m2.clone(), topic.clone()]);
    let got = missing(json!({"earliest_events": [m1], "latest_events": [m3], "limit": 2}));
    assert_eq!(got, vec![m2.clone(), topic.clone()]);
    let depth_of_m2 = get_ok(&as_a, &b.name, &format!("{fed}/event/{}", enc(&m2)))["pdus"][0]
        ["depth"]
        .as_i64()
        .unwrap();
    let got =
        missing(json!({"earliest_events": [], "latest_events": [m3], "min_depth": depth_of_m2}));
    assert_eq!(got, vec![m2.clone(), topic.clone()]);
    let got = missing(json!({"earliest_events": [], "latest_events": [m3], "limit": 1000}));
    assert_eq!(
        got.len(),
        20.min(everything.len() - 1),
        "back to the create event"
    );

    // /timestamp_to_event, both directions.
    let tte = |ts: u64, dir: &str| {
        signed(
            &as_a,
            &b.name,
            "GET",
            &format!("{fed}/timestamp_to_event/{r}?ts={ts}&dir={dir}"),
            None,
        )
    };
    let (s, v) = tte(0, "f");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event_id"], everything[0].as_str());
    let (s, v) = tte(now() + 3_600_000, "b");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event_id"], m3.as_str());
    assert!(v["origin_server_ts"].as_u64().unwrap() <= now());
    assert_eq!(tte(0, "b").0, 404);
    assert_eq!(tte(now() + 3_600_000, "f").0, 404);
    assert_eq!(tte(0, "x").0, 400);

    // C has no member: 403 everywhere; unsigned: 401; bad input: 400.
    let paths = [
        ("GET", format!("{fed}/state/{r}?event_id={}", enc(&m3))),
        ("GET", format!("{fed}/state_ids/{r}?event_id={}", enc(&m3))),
        ("GET", format!("{fed}/event/{}", enc(&m3))),
        ("GET", format!("{fed}/event_auth/{r}/{}", enc(&m3))),
        ("GET", format!("{fed}/backfill/{r}?v={}&limit=5", enc(&m3))),
        ("POST", format!("{fed}/get_missing_events/{r}")),
        ("GET", format!("{fed}/timestamp_to_event/{r}?ts=0&dir=f")),
    ];
    for (method, path) in &paths {
        let body =
            (*method == "POST").then(|| json!({"earliest_events": [], "latest_events": [m3]}));
        let (s, v) = signed(&as_c, &b.name, method, path, body);
        assert_eq!(
            (s, v["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{path}: {v}"
        );
        assert_eq!(unsigned(&as_a, &b.name, method, path), 401, "{path}");
    }
    let other = create_room(&b.h, t, json!({}));
    let other_event = latest(&b.h, t, &other);
    let (s, v) = signed(
        &as_a,
        &b.name,
        "GET",
        &format!("{fed}/state_ids/{r}?event_id={}", enc(&other_event)),
        None,
    );
    assert_eq!(
        (s, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );
    // bob's server is not in `other`: 403, also for an unknown room.
    let (s, _) = signed(
        &as_a,
        &b.name,
        "GET",
        &format!("{fed}/event/{}", enc(&other_event)),
        None,
    );
    assert_eq!(s, 403);
    let unknown = enc(&format!("!nope:{}", b.name));
    let (s, _) = signed(
        &as_a,
        &b.name,
        "GET",
        &format!("{fed}/state_ids/{unknown}?event_id={}", enc(&m3)),
        None,
    );
    assert_eq!(s, 403);
    for (method, path, body, code) in [
        (
            "GET",
            format!("{fed}/state_ids/{r}"),
            None,
            "M_MISSING_PARAM",
        ),
        (
            "GET",
            format!("{fed}/state_ids/{r}?event_id=nope"),
            None,
            "M_INVALID_PARAM",
        ),
        (
            "GET",
            format!("{fed}/backfill/{r}?v={}&limit=x", enc(&m3)),
            None,
            "M_INVALID_PARAM",
        ),
        (
            "GET",
            format!("{fed}/backfill/{r}?limit=5"),
            None,
            "M_MISSING_PARAM",
        ),
        (
            "POST",
            format!("{fed}/get_missing_events/{r}"),
            Some(json!({"latest_events": "x"})),
            "M_BAD_JSON",
        ),
    ] {
        let (s, v) = signed(&as_a, &b.name, method, &path, body);
        assert_eq!((s, v["errcode"].as_str()), (400, Some(code)), "{path}: {v}");
    }
}

/// `history_visibility: joined`: the events before bob's join are served
/// to his server redacted (Synapse `filter_events_for_server`), his join
/// and what follows in full.
#[test]
fn joined_only_history_is_served_redacted_to_a_new_server() {
    let a = start_fed(&[]);
    let b = start_fed(&[("HEARTHTEST_INJECT_PDUS", "1")]);
    let alice = register_user(&b.h, "alice");
    let t = alice.token.as_str();
    let room = create_room(&b.h, t, json!({}));
    let hv = json!({"history_visibility": "joined"});
    put_state(&b.h, t, &room, "m.room.history_visibility", hv);
    let early = send(&b.h, t, &room, "secret");
    let bob = format!("@bob:{}", a.name);
    let join = remote_join(&b, t, &a, &room, &bob);
    let late = send(&b.h, t, &room, "hello");
    let as_a = client(a.key());
    let fed = "/_matrix/federation/v1";
    let r = enc(&room);

    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/backfill/{r}?v={}&limit=10", enc(&late)),
    );
    let pdus = v["pdus"].as_array().unwrap();
    let by_id = |id: &str| pdus.iter().find(|e| id_of(e) == id).unwrap().clone();
    assert_eq!(by_id(&late)["content"]["body"], "hello");
    assert_eq!(by_id(&join)["content"]["membership"], "join");
    let hidden = by_id(&early);
    assert_eq!(hidden["content"], json!({}), "{hidden}");
    assert_eq!(hidden["type"], "m.room.message");
    // Redacted, still the same event (the id is the redacted form's hash).
    assert_eq!(id_of(&hidden), early);
    let v = get_ok(&as_a, &b.name, &format!("{fed}/event/{}", enc(&early)));
    assert_eq!(v["pdus"][0]["content"], json!({}));
    let (s, v) = signed(
        &as_a,
        &b.name,
        "POST",
        &format!("{fed}/get_missing_events/{r}"),
        Some(json!({"earliest_events": [], "latest_events": [late], "limit": 20})),
    );
    assert_eq!(s, 200);
    let events = v["events"].as_array().unwrap();
    let e = events.iter().find(|e| id_of(e) == early).unwrap();
    assert_eq!(e["content"], json!({}));
    // State events needed for auth are served in full by /state.
    let v = get_ok(
        &as_a,
        &b.name,
        &format!("{fed}/state/{r}?event_id={}", enc(&late)),
    );
    let hv = v["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.history_visibility")
        .unwrap()
        .clone();
    assert_eq!(hv["content"]["history_visibility"], "joined");
}

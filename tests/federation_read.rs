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
    common::fed::free_port()
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

/// Requests from one server to another, paths under
/// `/_matrix/federation/v1`.
struct Peer {
    fed: Rc<Federation>,
    to: String,
}

const FED: &str = "/_matrix/federation/v1";

impl Peer {
    fn new(from: &FedServer, to: &FedServer) -> Peer {
        Peer {
            fed: client(from.key()),
            to: to.name.clone(),
        }
    }

    /// A signed request: `(status, body)`.
    fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        block_on(async {
            let path = format!("{FED}{path}");
            let r = self.fed.request(&self.to, method, &path, body.as_ref());
            let r = r.await.unwrap();
            (
                r.status,
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            )
        })
    }

    /// The 200 body of a signed `GET`.
    #[track_caller]
    fn get(&self, path: &str) -> Value {
        let (status, v) = self.req("GET", path, None);
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// The event ids `/get_missing_events` answers for `body`.
    #[track_caller]
    fn missing(&self, room: &str, body: Value) -> Vec<String> {
        let (s, v) = self.req("POST", &format!("/get_missing_events/{room}"), Some(body));
        assert_eq!(s, 200, "{v}");
        ids(&v["events"])
    }

    /// The status of the request sent unsigned.
    fn unsigned(&self, method: &str, path: &str) -> u16 {
        block_on(async {
            let body = (method == "POST").then_some(&b"{}"[..]);
            let path = format!("{FED}{path}");
            let r = self
                .fed
                .send_raw(&self.to, method, &path, &[], body, 1 << 20);
            r.await.unwrap().status
        })
    }
}

/// `(status, errcode)` of an answer.
fn err(r: (u16, Value)) -> (u16, String) {
    (r.0, r.1["errcode"].as_str().unwrap_or_default().to_owned())
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

/// The strings of a JSON array, or the `event_id`s of an array of events.
fn strings(v: &Value) -> Vec<String> {
    let s = |e: &Value| e.as_str().or(e["event_id"].as_str()).unwrap().to_owned();
    v.as_array().unwrap().iter().map(s).collect()
}

fn client_state(h: &Hearth, token: &str, room: &str) -> Vec<Value> {
    let v = ok(call(h, "GET", &format!("/rooms/{room}/state"), token, None));
    v.as_array().unwrap().clone()
}

/// The room's event ids from client `/messages` (`q`: its query).
fn messages(h: &Hearth, token: &str, room: &str, q: &str) -> Vec<String> {
    let path = format!("/rooms/{room}/messages?{q}");
    strings(&ok(call(h, "GET", &path, token, None))["chunk"])
}

fn latest(h: &Hearth, token: &str, room: &str) -> String {
    messages(h, token, room, "dir=b&limit=1").remove(0)
}

/// Every event id of the room, oldest first.
fn all_events(h: &Hearth, token: &str, room: &str) -> Vec<String> {
    messages(h, token, room, "dir=f&limit=1000")
}

fn send(h: &Hearth, token: &str, room: &str, body: &str) -> String {
    let path = format!("/rooms/{room}/send/m.room.message/{body}");
    let content = json!({"msgtype": "m.text", "body": body});
    strings(&json!([ok(call(h, "PUT", &path, token, Some(content)))])).remove(0)
}

fn put_state(h: &Hearth, token: &str, room: &str, ty: &str, content: Value) -> String {
    let path = format!("/rooms/{room}/state/{ty}/");
    strings(&json!([ok(call(h, "PUT", &path, token, Some(content)))])).remove(0)
}

/// `user` (of server `a`) joins B's `room` through B's test door, the PDU
/// signed with A's key; returns the join's event id.
fn remote_join(b: &FedServer, token: &str, a: &FedServer, room: &str, user: &str) -> String {
    let prev = latest(&b.h, token, room);
    remote_pdu(b, token, a, room, user, None, &prev)
}

/// A PDU of `sender` (of server `a`) on top of `prev`, through B's test
/// door: a message `body`, or with `None` the sender's join.
fn remote_pdu(
    b: &FedServer,
    token: &str,
    a: &FedServer,
    room: &str,
    sender: &str,
    body: Option<&str>,
    prev: &str,
) -> String {
    let st = client_state(&b.h, token, room);
    let find = |t: &str, k: &str| {
        st.iter()
            .find(|e| e["type"] == t && e["state_key"] == k)
            .map(|e| e["event_id"].as_str().unwrap().try_into().unwrap())
    };
    let mut auth: Vec<ruma::OwnedEventId> = Vec::new();
    auth.extend(find("m.room.power_levels", ""));
    auth.extend(find("m.room.member", sender));
    let (kind, state_key, content) = match body {
        Some(b) => (
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": b}),
        ),
        None => {
            auth.extend(find("m.room.join_rules", ""));
            let c = json!({"membership": "join"});
            ("m.room.member", Some(sender.into()), c)
        }
    };
    let key = a.key();
    let Value::Object(c) = content else {
        unreachable!()
    };
    // One more than `prev`'s (history is linear up to `prev`).
    let depth = all_events(&b.h, token, room).iter().position(|e| e == prev);
    let signed = build_pdu(
        NewEvent {
            room_version: RoomVersion::V12,
            room_id: Some(room.try_into().unwrap()),
            sender: sender.try_into().unwrap(),
            event_type: kind.into(),
            state_key,
            content: ruma::canonical_json::try_from_json_map(c).unwrap(),
            prev_events: vec![prev.try_into().unwrap()],
            auth_events: auth,
            depth: depth.unwrap() as u64 + 2,
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
    let door = json_request(&b.h, "POST", "/_hearth/test/pdu", Some(token), Some(&body));
    let out = ok(door);
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
    let state_now = strings(&Value::Array(client_state(&b.h, t, &room)));
    let alice_member = client_state(&b.h, t, &room)
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.id.as_str())
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .unwrap();
    let as_a = Peer::new(&a, &b);
    let as_c = Peer::new(&c, &b);
    let r = enc(&room);
    let at = |id: &str| format!("?event_id={}", enc(id));

    // /state_ids at a message: the state then (= now), with a closed chain.
    let v = as_a.get(&format!("/state_ids/{r}{}", at(&m3)));
    let pdu_ids = strings(&v["pdu_ids"]);
    assert_eq!(set(&pdu_ids), set(&state_now), "{v}");
    assert!(pdu_ids.contains(&join) && pdu_ids.contains(&topic));
    let chain_ids = set(&strings(&v["auth_chain_ids"]));
    assert!(chain_ids.contains(&alice_member), "{v}");
    // /state: the same as full PDUs; the auth chain is closed.
    let v = as_a.get(&format!("/state/{r}{}", at(&m3)));
    assert_eq!(set(&ids(&v["pdus"])), set(&state_now));
    assert_eq!(set(&ids(&v["auth_chain"])), chain_ids);
    let pdus = v["pdus"].as_array().unwrap();
    let all: Vec<&Value> = pdus
        .iter()
        .chain(v["auth_chain"].as_array().unwrap())
        .collect();
    assert_closed(&all, &chain_ids);
    assert!(all
        .iter()
        .all(|e| e["signatures"].is_object() && e["hashes"].is_object()));

    // At the topic change: the state *before* it holds the first topic.
    let v = as_a.get(&format!("/state/{r}{}", at(&topic)));
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
    let v = as_a.get(&format!("/state_ids/{r}{}", at(&join)));
    assert!(!strings(&v["pdu_ids"]).contains(&join));
    assert_eq!(strings(&v["pdu_ids"]).len(), state_now.len() - 1);

    // /event: one PDU in a transaction from B.
    let v = as_a.get(&format!("/event/{}", enc(&m2)));
    assert_eq!(v["origin"], b.name.as_str());
    assert!(v["origin_server_ts"].as_u64().unwrap() > 0);
    assert_eq!(v["pdus"][0]["content"]["body"], "m2");
    assert_eq!(id_of(&v["pdus"][0]), m2);
    let m2_pdu = v["pdus"][0].clone();

    // /event_auth: the event's auth chain, closed, without the event.
    let v = as_a.get(&format!("/event_auth/{r}/{}", enc(&m2)));
    let chain: Vec<&Value> = v["auth_chain"].as_array().unwrap().iter().collect();
    let chain_ids = set(&ids(&v["auth_chain"]));
    assert!(!chain_ids.contains(&m2) && chain_ids.contains(&alice_member));
    assert_closed(&[&m2_pdu], &chain_ids);
    assert_closed(&chain, &chain_ids);

    // /backfill: from m3 back, deepest first, the seed included.
    let v = as_a.get(&format!("/backfill/{r}?v={}&limit=3", enc(&m3)));
    assert_eq!(v["origin"], b.name.as_str());
    assert_eq!(ids(&v["pdus"]), vec![m3.clone(), topic.clone(), m2.clone()]);
    let v = as_a.get(&format!("/backfill/{r}?v={}&limit=1000", enc(&m3)));
    let mut back = ids(&v["pdus"]);
    back.reverse();
    assert_eq!(
        back, everything,
        "the whole room (a limit over 100 is capped)"
    );
    let pdus = v["pdus"].as_array().unwrap();
    let depths: Vec<u64> = pdus.iter().map(|e| e["depth"].as_u64().unwrap()).collect();
    assert!(depths.windows(2).all(|w| w[0] > w[1]), "{depths:?}");
    // Two seeds (repeated `v`), from the middle.
    let v = as_a.get(&format!(
        "/backfill/{r}?v={}&v={}&limit=2",
        enc(&m2),
        enc(&m1)
    ));
    assert_eq!(ids(&v["pdus"]), vec![m2.clone(), join.clone()]);

    // /get_missing_events: back from m3, stopping at m1, oldest first.
    let got = as_a.missing(&r, json!({"earliest_events": [m1], "latest_events": [m3]}));
    assert_eq!(got, vec![join.clone(), m2.clone(), topic.clone()]);
    let body = json!({"earliest_events": [m1], "latest_events": [m3], "limit": 2});
    assert_eq!(as_a.missing(&r, body), vec![m2.clone(), topic.clone()]);
    let min_depth = m2_pdu["depth"].as_i64().unwrap();
    let body = json!({"earliest_events": [], "latest_events": [m3], "min_depth": min_depth});
    assert_eq!(as_a.missing(&r, body), vec![m2.clone(), topic.clone()]);
    let body = json!({"earliest_events": [], "latest_events": [m3], "limit": 1000});
    let got = as_a.missing(&r, body);
    assert_eq!(
        got.len(),
        20.min(everything.len() - 1),
        "back to the create event"
    );

    // /timestamp_to_event, both directions.
    let tte = |ts: u64, dir: &str| {
        as_a.req(
            "GET",
            &format!("/timestamp_to_event/{r}?ts={ts}&dir={dir}"),
            None,
        )
    };
    let later = now() + 3_600_000;
    let (s, v) = tte(0, "f");
    assert_eq!((s, &v["event_id"]), (200, &json!(everything[0])), "{v}");
    let (s, v) = tte(later, "b");
    assert_eq!((s, &v["event_id"]), (200, &json!(m3)), "{v}");
    assert!(v["origin_server_ts"].as_u64().unwrap() <= now());
    assert_eq!(err(tte(0, "b")), (404, "M_NOT_FOUND".into()));
    assert_eq!(err(tte(later, "f")), (404, "M_NOT_FOUND".into()));
    assert_eq!(err(tte(0, "x")), (400, "M_INVALID_PARAM".into()));

    // C has no member: 403 everywhere; unsigned: 401.
    let paths = [
        ("GET", format!("/state/{r}{}", at(&m3))),
        ("GET", format!("/state_ids/{r}{}", at(&m3))),
        ("GET", format!("/event/{}", enc(&m3))),
        ("GET", format!("/event_auth/{r}/{}", enc(&m3))),
        ("GET", format!("/backfill/{r}?v={}&limit=5", enc(&m3))),
        ("POST", format!("/get_missing_events/{r}")),
        ("GET", format!("/timestamp_to_event/{r}?ts=0&dir=f")),
    ];
    for (method, path) in &paths {
        let body = json!({"earliest_events": [], "latest_events": [m3]});
        let body = (*method == "POST").then_some(body);
        let forbidden = (403, "M_FORBIDDEN".to_owned());
        assert_eq!(err(as_c.req(method, path, body)), forbidden, "{path}");
        assert_eq!(as_a.unsigned(method, path), 401, "{path}");
    }
    // An event of another room: 404; a room bob's server is not in, or an
    // unknown room: 403 (Synapse: "Host not in room").
    let other = create_room(&b.h, t, json!({}));
    let other_event = latest(&b.h, t, &other);
    let r404 = as_a.req("GET", &format!("/state_ids/{r}{}", at(&other_event)), None);
    assert_eq!(err(r404), (404, "M_NOT_FOUND".into()));
    let r403 = as_a.req("GET", &format!("/event/{}", enc(&other_event)), None);
    assert_eq!(err(r403).0, 403);
    let unknown = enc(&format!("!nope:{}", b.name));
    let r403 = as_a.req("GET", &format!("/state_ids/{unknown}{}", at(&m3)), None);
    assert_eq!(err(r403).0, 403);
    // Bad input: 400.
    let (missing, invalid) = ("M_MISSING_PARAM", "M_INVALID_PARAM");
    let gme = format!("/get_missing_events/{r}");
    let many = format!("&v={}", enc(&m3)).repeat(101);
    for (method, path, body, code) in [
        ("GET", format!("/state_ids/{r}"), None, missing),
        ("GET", format!("/state_ids/{r}?event_id=x"), None, invalid),
        (
            "GET",
            format!("/backfill/{r}?v={}&limit=x", enc(&m3)),
            None,
            invalid,
        ),
        ("GET", format!("/backfill/{r}?limit=5"), None, missing),
        (
            "GET",
            format!("/backfill/{r}?limit=5{}", many),
            None,
            invalid,
        ),
        (
            "POST",
            gme,
            Some(json!({"latest_events": "x"})),
            "M_BAD_JSON",
        ),
    ] {
        let got = err(as_a.req(method, &path, body));
        assert_eq!(got, (400, code.into()), "{path}");
    }

    // A fork: alice's m4 and bob's message both on m3; alice's next topic
    // has both as prev events. The state before it is what both agree on.
    let m4 = send(&b.h, t, &room, "m4");
    let fork = remote_pdu(&b, t, &a, &room, &bob, Some("fork"), &m3);
    let third = put_state(&b.h, t, &room, "m.room.topic", json!({"topic": "third"}));
    let v = as_a.get(&format!("/event/{}", enc(&third)));
    let prevs = set(&strings(&v["pdus"][0]["prev_events"]));
    assert_eq!(prevs, set(&[m4.clone(), fork.clone()]));
    let v = as_a.get(&format!("/state_ids/{r}{}", at(&third)));
    assert_eq!(set(&strings(&v["pdu_ids"])), set(&state_now), "{v}");
    let v = as_a.get(&format!("/backfill/{r}?v={}&limit=3", enc(&third)));
    let got = ids(&v["pdus"]);
    assert_eq!(got[0], third);
    assert_eq!(set(&got[1..]), set(&[m4, fork]));

    // A server the room's ACL denies (ports are ignored): 403.
    let acl = json!({"allow": ["*"], "deny": ["localhost"]});
    put_state(&b.h, t, &room, "m.room.server_acl", acl);
    let (s, v) = as_a.req("GET", &format!("/state_ids/{r}{}", at(&m3)), None);
    assert_eq!((s, &v["errcode"]), (403, &json!("M_FORBIDDEN")));
    assert!(v["error"].as_str().unwrap().contains("banned"), "{v}");
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
    let as_a = Peer::new(&a, &b);
    let r = enc(&room);

    let v = as_a.get(&format!("/backfill/{r}?v={}&limit=10", enc(&late)));
    let pdus = v["pdus"].as_array().unwrap();
    let by_id = |id: &str| pdus.iter().find(|e| id_of(e) == id).unwrap().clone();
    assert_eq!(by_id(&late)["content"]["body"], "hello");
    assert_eq!(by_id(&join)["content"]["membership"], "join");
    let hidden = by_id(&early);
    assert_eq!(hidden["content"], json!({}), "{hidden}");
    assert_eq!(hidden["type"], "m.room.message");
    // Redacted, still the same event (the id is the redacted form's hash).
    assert_eq!(id_of(&hidden), early);
    let v = as_a.get(&format!("/event/{}", enc(&early)));
    assert_eq!(v["pdus"][0]["content"], json!({}));
    let (s, v) = as_a.req(
        "POST",
        &format!("/get_missing_events/{r}"),
        Some(json!({"earliest_events": [], "latest_events": [late], "limit": 20})),
    );
    assert_eq!(s, 200);
    let events = v["events"].as_array().unwrap();
    let e = events.iter().find(|e| id_of(e) == early).unwrap();
    assert_eq!(e["content"], json!({}));
    // The state (needed for auth) is served in full by /state.
    let v = as_a.get(&format!("/state/{r}?event_id={}", enc(&late)));
    let pdus = v["pdus"].as_array().unwrap();
    let hv = pdus
        .iter()
        .find(|e| e["type"] == "m.room.history_visibility");
    assert_eq!(hv.unwrap()["content"]["history_visibility"], "joined");
}

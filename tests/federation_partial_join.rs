//! End-to-end: hearth joins a room hosted elsewhere with partial state
//! (MSC3706/MSC3902 "faster joins", `omit_members`). Federation servers of
//! the tests' own (`common::fake_server`, their own keys) host a v12 room
//! with many members and answer make_join / send_join (members omitted),
//! `/state_ids` and `/event` as each test says:
//! - the joining user can send at once, the room is partial, then the
//!   resync completes: the full member list, no partial mark;
//! - the first resident server failing mid-resync: the second finishes it;
//! - hearth killed mid-resync: the restart resumes and completes it;
//! - a big resync takes the state from one `/state` answer, and falls
//!   back to `/event` when `/state` fails;
//! - a send_join answer with a forged event or a broken auth chain is
//!   refused: the client gets an error, nothing of the room is left;
//! - events received while partial are re-checked on the full state: one
//!   from a user the full state bans is rejected (out of the timeline and
//!   the state), the legit ones get the full state.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_server::{FakeServer, Received};
use common::fed::{eventually, start_home, Home};
use common::{call, enc, register_user, Hearth, Registered};
use hearth::db::testing::TestCluster;
use hearth::events::{build_pdu, NewEvent, RoomVersion};
use serde_json::{json, Value};

const V12: RoomVersion = RoomVersion::V12;

/// A room as its resident servers have it: every event, the state.
#[derive(Clone, Default)]
struct Hosted {
    room: String,
    by_id: HashMap<String, Value>,
    state: BTreeMap<(String, String), String>,
    last: String,
    depth: u64,
}

impl Hosted {
    fn find(&self, t: &str, k: &str) -> Option<String> {
        self.state.get(&(t.into(), k.into())).cloned()
    }

    /// Adds a state event signed by `fake` (whose user `sender` is).
    fn add(
        &mut self,
        fake: &FakeServer,
        sender: &str,
        kind: &str,
        key: &str,
        content: Value,
        auth: &[Option<String>],
    ) -> String {
        let Value::Object(c) = content else { panic!() };
        self.depth += 1;
        let create = kind == "m.room.create";
        let signed = build_pdu(
            NewEvent {
                room_version: V12,
                room_id: (!create).then(|| self.room.as_str().try_into().unwrap()),
                sender: sender.try_into().unwrap(),
                event_type: kind.into(),
                state_key: Some(key.into()),
                content: ruma::canonical_json::try_from_json_map(c).unwrap(),
                prev_events: if create {
                    vec![]
                } else {
                    vec![self.last.as_str().try_into().unwrap()]
                },
                auth_events: auth
                    .iter()
                    .flatten()
                    .map(|a| a.as_str().try_into().unwrap())
                    .collect(),
                depth: self.depth,
                origin_server_ts: common::fed::now(),
                redacts: None,
            },
            &fake.key,
        )
        .unwrap();
        let id = signed.event_id.to_string();
        if create {
            self.room = signed.room_id.to_string();
        }
        self.by_id
            .insert(id.clone(), serde_json::to_value(&signed.pdu).unwrap());
        self.state.insert((kind.into(), key.into()), id.clone());
        self.last = id.clone();
        id
    }

    /// An event signed by `fake` on `prev`, served by `/event` but kept
    /// out of the room's state (what residents send after our join).
    #[allow(clippy::too_many_arguments)]
    fn extra(
        &mut self,
        fake: &FakeServer,
        sender: &str,
        kind: &str,
        key: Option<&str>,
        content: Value,
        auth: &[String],
        prev: &str,
    ) -> (String, Value) {
        let Value::Object(c) = content else { panic!() };
        self.depth += 1;
        let signed = build_pdu(
            NewEvent {
                room_version: V12,
                room_id: Some(self.room.as_str().try_into().unwrap()),
                sender: sender.try_into().unwrap(),
                event_type: kind.into(),
                state_key: key.map(Into::into),
                content: ruma::canonical_json::try_from_json_map(c).unwrap(),
                prev_events: vec![prev.try_into().unwrap()],
                auth_events: auth
                    .iter()
                    .map(|a| a.as_str().try_into().unwrap())
                    .collect(),
                depth: self.depth,
                origin_server_ts: common::fed::now(),
                redacts: None,
            },
            &fake.key,
        )
        .unwrap();
        let id = signed.event_id.to_string();
        let json = serde_json::to_value(&signed.pdu).unwrap();
        self.by_id.insert(id.clone(), json.clone());
        (id, json)
    }

    /// The auth chain of `ids` (transitively, without `ids` themselves
    /// unless one is an auth event of another).
    fn auth_chain(&self, ids: &[String]) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: Vec<String> = ids.to_vec();
        while let Some(id) = todo.pop() {
            let Some(ev) = self.by_id.get(&id) else {
                continue;
            };
            for a in ev["auth_events"].as_array().into_iter().flatten() {
                let a = a.as_str().unwrap().to_owned();
                if seen.insert(a.clone()) {
                    todo.push(a);
                }
            }
        }
        // v12: the create event is implied, so listed explicitly.
        seen.insert(format!("${}", &self.room[1..]));
        seen.into_iter().collect()
    }
}

/// A v12 room created by `@creator` of `fakes[0]`, with `per_server`
/// members from each of `fakes`.
fn host(fakes: &[&FakeServer], per_server: usize) -> Hosted {
    let mut h = Hosted::default();
    let creator = format!("@creator:{}", fakes[0].name);
    let f0 = fakes[0];
    h.add(
        f0,
        &creator,
        "m.room.create",
        "",
        json!({"room_version": "12"}),
        &[],
    );
    let me = h.add(
        f0,
        &creator,
        "m.room.member",
        &creator,
        json!({"membership": "join"}),
        &[],
    );
    let pl = h.add(
        f0,
        &creator,
        "m.room.power_levels",
        "",
        json!({}),
        &[Some(me.clone())],
    );
    let auth = [Some(me.clone()), Some(pl.clone())];
    h.add(
        f0,
        &creator,
        "m.room.join_rules",
        "",
        json!({"join_rule": "public"}),
        &auth,
    );
    h.add(
        f0,
        &creator,
        "m.room.history_visibility",
        "",
        json!({"history_visibility": "shared"}),
        &auth,
    );
    h.add(
        f0,
        &creator,
        "m.room.name",
        "",
        json!({"name": "big room"}),
        &auth,
    );
    for f in fakes {
        for i in 0..per_server {
            let u = format!("@m{i}:{}", f.name);
            let auth = [
                h.find("m.room.join_rules", ""),
                h.find("m.room.power_levels", ""),
            ];
            h.add(
                f,
                &u,
                "m.room.member",
                &u,
                json!({"membership": "join"}),
                &auth,
            );
        }
    }
    h
}

/// How a resident server behaves.
#[derive(Default)]
struct Behaviour {
    /// `/state_ids` and `/event` answer 500.
    down: AtomicBool,
    /// `/event` answers after this many ms.
    slow_ms: AtomicU64,
    /// `/state` answers 500 (the resync falls back to `/event`).
    no_state: AtomicBool,
    /// Tamper with the send_join answer.
    tamper: Mutex<Option<fn(&mut Value)>>,
}

/// Serves `room` from `fake` as a resident server; `all` are every
/// resident server's names (`servers_in_room`).
fn serve(fake: &FakeServer, room: Arc<Mutex<Hosted>>, all: Vec<String>, b: Arc<Behaviour>) {
    let name = fake.name.clone();
    fake.handle(move |r: &Received| {
        let p = r.path.as_str();
        if p.starts_with("/_matrix/federation/v1/send/") {
            return Some((200, json!({"pdus": {}})));
        }
        if p.starts_with("/_matrix/federation/v1/make_join/") {
            let h = room.lock().unwrap();
            let seg = p.split('?').next().unwrap().split('/').nth(6).unwrap();
            let user = percent_encoding::percent_decode_str(seg)
                .decode_utf8()
                .unwrap()
                .into_owned();
            let auth: Vec<String> = [h.find("m.room.join_rules", ""), h.find("m.room.power_levels", "")]
                .into_iter()
                .flatten()
                .collect();
            return Some((
                200,
                json!({"room_version": "12", "event": {
                    "room_id": h.room, "sender": user, "type": "m.room.member",
                    "state_key": user, "content": {"membership": "join"},
                    "prev_events": [h.last], "auth_events": auth, "depth": h.depth + 1,
                    "origin_server_ts": common::fed::now(),
                }}),
            ));
        }
        if p.starts_with("/_matrix/federation/v2/send_join/") {
            let mut h = room.lock().unwrap();
            let omit = p.contains("omit_members=true");
            let state: Vec<String> = h
                .state
                .iter()
                .filter(|((t, _), _)| !(omit && t == "m.room.member"))
                .map(|(_, id)| id.clone())
                .collect();
            let chain = h.auth_chain(&h.state.values().cloned().collect::<Vec<_>>());
            let chain: Vec<String> = if omit {
                h.auth_chain(&state)
            } else {
                chain
            };
            let ev = |id: &String| h.by_id[id].clone();
            let mut answer = json!({
                "event": r.body,
                "state": state.iter().map(ev).collect::<Vec<_>>(),
                "auth_chain": chain.iter().filter(|c| !state.contains(c)).map(ev).collect::<Vec<_>>(),
                "members_omitted": omit,
                "servers_in_room": all,
                "origin": name,
            });
            if let Some(t) = *b.tamper.lock().unwrap() {
                t(&mut answer);
                return Some((200, answer));
            }
            // The join is now part of the room.
            let join = r.body.clone();
            let id = common::fed::id_of(&join);
            let key = join["state_key"].as_str().unwrap().to_owned();
            h.by_id.insert(id.clone(), join);
            h.state.insert(("m.room.member".into(), key), id.clone());
            h.last = id;
            h.depth += 1;
            return Some((200, answer));
        }
        if p.starts_with("/_matrix/federation/v1/state_ids/") {
            if b.down.load(Ordering::SeqCst) {
                return Some((500, json!({"errcode": "M_UNKNOWN", "error": "down"})));
            }
            let h = room.lock().unwrap();
            // The state before our join: all but the last member event.
            let join = p.split("event_id=").nth(1).map(|s| {
                percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned()
            });
            let ids: Vec<String> = h
                .state
                .values()
                .filter(|id| Some(*id) != join.as_ref())
                .cloned()
                .collect();
            let chain = h.auth_chain(&ids);
            return Some((200, json!({"pdu_ids": ids, "auth_chain_ids": chain})));
        }
        if p.starts_with("/_matrix/federation/v1/state/") {
            if b.down.load(Ordering::SeqCst) || b.no_state.load(Ordering::SeqCst) {
                return Some((500, json!({"errcode": "M_UNKNOWN", "error": "down"})));
            }
            let h = room.lock().unwrap();
            let join = p.split("event_id=").nth(1).map(|s| {
                percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned()
            });
            let ids: Vec<String> = h
                .state
                .values()
                .filter(|id| Some(*id) != join.as_ref())
                .cloned()
                .collect();
            let chain = h.auth_chain(&ids);
            let ev = |id: &String| h.by_id.get(id).cloned();
            return Some((
                200,
                json!({
                    "pdus": ids.iter().filter_map(ev).collect::<Vec<_>>(),
                    "auth_chain": chain.iter().filter_map(ev).collect::<Vec<_>>(),
                }),
            ));
        }
        if let Some(rest) = p.strip_prefix("/_matrix/federation/v1/event/") {
            let ms = b.slow_ms.load(Ordering::SeqCst);
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
            if b.down.load(Ordering::SeqCst) {
                return Some((500, json!({"errcode": "M_UNKNOWN", "error": "down"})));
            }
            let id = percent_encoding::percent_decode_str(rest)
                .decode_utf8()
                .unwrap()
                .into_owned();
            let h = room.lock().unwrap();
            return h.by_id.get(&id).map(|e| {
                (200, json!({"origin": name, "origin_server_ts": 0, "pdus": [e]}))
            });
        }
        None
    });
}

struct World {
    home: Home,
    fakes: Vec<FakeServer>,
    behaviour: Vec<Arc<Behaviour>>,
    hosted: Arc<Mutex<Hosted>>,
    alice: Registered,
}

fn world(servers: usize, per_server: usize) -> World {
    let home = start_home();
    let fakes: Vec<FakeServer> = (0..servers)
        .map(|i| FakeServer::start(40 + i as u8))
        .collect();
    let refs: Vec<&FakeServer> = fakes.iter().collect();
    let hosted = Arc::new(Mutex::new(host(&refs, per_server)));
    let names: Vec<String> = fakes.iter().map(|f| f.name.clone()).collect();
    let behaviour: Vec<Arc<Behaviour>> = fakes.iter().map(|_| Arc::default()).collect();
    for (f, b) in fakes.iter().zip(&behaviour) {
        serve(f, hosted.clone(), names.clone(), b.clone());
    }
    let alice = register_user(&home.h, "alice");
    World {
        home,
        fakes,
        behaviour,
        hosted,
        alice,
    }
}

impl World {
    fn room(&self) -> String {
        self.hosted.lock().unwrap().room.clone()
    }

    fn join(&self) -> common::Resp {
        let via: Vec<String> = self
            .fakes
            .iter()
            .map(|f| format!("server_name={}", enc(&f.name)))
            .collect();
        call(
            &self.home.h,
            "POST",
            &format!("/join/{}?{}", enc(&self.room()), via.join("&")),
            &self.alice.token,
            Some(json!({})),
        )
    }

    fn psql(&self, sql: &str) -> String {
        let url = self
            .home
            .opts
            .env
            .iter()
            .find(|(k, _)| k == "HEARTH_DATABASE__URL")
            .map(|(_, v)| v.clone())
            .unwrap();
        let db = url.rsplit('/').next().unwrap().to_owned();
        TestCluster::shared().psql(&db, sql).expect("psql")
    }

    fn partial_rows(&self) -> String {
        self.psql(&format!(
            "SELECT count(*) FROM partial_state_rooms WHERE room_id = '{}'",
            self.room()
        ))
    }

    fn send(&self, body: &str) -> (u16, String) {
        let r = call(
            &self.home.h,
            "PUT",
            &format!(
                "/rooms/{}/send/m.room.message/{}",
                enc(&self.room()),
                common::fed::now()
            ),
            &self.alice.token,
            Some(json!({"msgtype": "m.text", "body": body})),
        );
        let id = r.json()["event_id"].as_str().unwrap_or("").to_owned();
        (r.status, id)
    }

    /// Joined members as hearth's `/members` answers (waits for full state).
    fn members(&self) -> usize {
        let r = call(
            &self.home.h,
            "GET",
            &format!("/rooms/{}/members?membership=join", enc(&self.room())),
            &self.alice.token,
            None,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["chunk"].as_array().map_or(0, Vec::len)
    }

    /// Whether `fake` received the event `id` in a transaction.
    fn received(&self, fake: usize, id: &str) -> bool {
        self.fakes[fake]
            .requests("/_matrix/federation/v1/send/")
            .iter()
            .flat_map(|r| r.body["pdus"].as_array().cloned().unwrap_or_default())
            .any(|p| common::fed::id_of(&p) == id)
    }
}

#[test]
fn a_partial_join_can_send_at_once_and_resyncs_the_members() {
    let w = world(2, 15);
    // Every resident server is slow on /event: the resync takes a while.
    for b in &w.behaviour {
        b.slow_ms.store(200, Ordering::SeqCst);
    }
    let t0 = Instant::now();
    let r = w.join();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let joined = t0.elapsed();
    let sent = w.fakes[0].requests("/_matrix/federation/v2/send_join/");
    assert!(
        sent[0].path.contains("omit_members=true"),
        "{}",
        sent[0].path
    );
    assert_eq!(w.partial_rows(), "1", "the room is recorded partial");
    let (status, id) = w.send("hello while partial");
    assert_eq!(status, 200);
    let can_send = t0.elapsed();
    // Sent to every server the resident named, although hearth knows no
    // member of the second yet.
    eventually("the message reaches both resident servers", || {
        w.received(0, &id) && w.received(1, &id)
    });
    // /members waits for the full state: 1 creator + 30 members + alice.
    assert_eq!(w.members(), 32);
    let full = t0.elapsed();
    assert_eq!(w.partial_rows(), "0", "the partial mark is gone");
    assert!(!w.fakes[0]
        .requests("/_matrix/federation/v1/state_ids/")
        .is_empty());
    println!(
        "partial join: /join answered after {joined:?}, could send after {can_send:?}, \
         full state after {full:?}"
    );
    // Sending after the resync still works, to both.
    let (status, id) = w.send("hello with full state");
    assert_eq!(status, 200);
    eventually("the second message reaches both", || {
        w.received(0, &id) && w.received(1, &id)
    });
}

#[test]
fn a_resident_server_failing_mid_resync_is_replaced_by_the_next() {
    let w = world(2, 10);
    w.behaviour[0].slow_ms.store(300, Ordering::SeqCst);
    let r = w.join();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    eventually("the resync started at the first server", || {
        !w.fakes[0]
            .requests("/_matrix/federation/v1/event/")
            .is_empty()
    });
    // The first server dies mid-resync.
    w.behaviour[0].down.store(true, Ordering::SeqCst);
    assert_eq!(w.members(), 22);
    assert_eq!(w.partial_rows(), "0");
    assert!(
        !w.fakes[1]
            .requests("/_matrix/federation/v1/state_ids/")
            .is_empty(),
        "the second server finished it"
    );
}

#[test]
fn a_resync_interrupted_by_a_kill_resumes_after_the_restart() {
    let mut w = world(1, 40);
    w.behaviour[0].slow_ms.store(500, Ordering::SeqCst);
    let r = w.join();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    eventually("the resync started", || {
        !w.fakes[0]
            .requests("/_matrix/federation/v1/event/")
            .is_empty()
    });
    w.home.h.signal(libc::SIGKILL);
    w.home.h.wait_exit(Duration::from_secs(30));
    assert_eq!(w.partial_rows(), "1", "still partial after the kill");
    let before = w.fakes[0]
        .requests("/_matrix/federation/v1/state_ids/")
        .len();
    w.behaviour[0].slow_ms.store(0, Ordering::SeqCst);
    let dir = std::mem::replace(&mut w.home.h.data_dir, tempfile::tempdir().unwrap());
    w.home.h = Hearth::start_in(w.home.opts.clone(), dir);
    w.home
        .h
        .wait_for_log("resuming the resync", Duration::from_secs(30));
    assert_eq!(w.members(), 42);
    assert_eq!(w.partial_rows(), "0");
    assert!(
        w.fakes[0]
            .requests("/_matrix/federation/v1/state_ids/")
            .len()
            > before
    );
    let (status, _) = w.send("after the restart");
    assert_eq!(status, 200);
}

fn refused_join(tamper: fn(&mut Value)) {
    let w = world(1, 5);
    *w.behaviour[0].tamper.lock().unwrap() = Some(tamper);
    let r = w.join();
    assert!(
        r.status >= 400,
        "a bad answer must be refused: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(w.partial_rows(), "0");
    let room = w.room();
    assert_eq!(
        w.psql(&format!(
            "SELECT (SELECT count(*) FROM rooms WHERE room_id = '{room}') + \
             (SELECT count(*) FROM graph_events WHERE room_id = '{room}') + \
             (SELECT count(*) FROM events WHERE room_id = '{room}')"
        )),
        "0",
        "nothing of the room is stored"
    );
    let r = call(&w.home.h, "GET", "/joined_rooms", &w.alice.token, None);
    assert_eq!(r.json()["joined_rooms"], json!([]));
}

#[test]
fn a_send_join_answer_with_a_forged_event_is_refused() {
    refused_join(|a| {
        // The name event's content changed after signing: its hash and
        // signatures no longer hold.
        for e in a["state"].as_array_mut().unwrap() {
            if e["type"] == "m.room.name" {
                e["content"]["name"] = json!("forged");
            }
        }
    });
}

#[test]
fn a_send_join_answer_with_a_broken_auth_chain_is_refused() {
    refused_join(|a| {
        // The power levels' auth event (the creator's member event) left
        // out of the auth chain: nothing proves the state holds.
        let chain = a["auth_chain"].as_array_mut().unwrap();
        chain.retain(|e| e["type"] != "m.room.member");
    });
}

fn sync(w: &World, since: Option<&str>, lazy: bool) -> Value {
    let mut path = String::from("/sync?timeout=0");
    if let Some(s) = since {
        path.push_str(&format!("&since={}", enc(s)));
    }
    if lazy {
        let f = json!({"room": {"state": {"lazy_load_members": true}}}).to_string();
        path.push_str(&format!("&filter={}", enc(&f)));
    }
    let r = call(&w.home.h, "GET", &path, &w.alice.token, None);
    assert_eq!(r.status, 200);
    r.json()
}

#[test]
fn sync_follows_synapse_for_partial_state_rooms() {
    let w = world(1, 12);
    // The resident server cannot serve the state yet: the room stays partial.
    w.behaviour[0].down.store(true, Ordering::SeqCst);
    let r = w.join();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let room = w.room();
    let (status, _) = w.send("while partial");
    assert_eq!(status, 200);
    // Without lazy-loading members the partial room is left out...
    let first = sync(&w, None, false);
    assert!(first["rooms"]["join"][&room].is_null(), "{first}");
    // ...with it, the room is there at once (its timeline has our message).
    let lazy = sync(&w, None, true);
    let tl = lazy["rooms"]["join"][&room]["timeline"]["events"].to_string();
    assert!(tl.contains("while partial"), "{lazy}");
    assert_eq!(w.partial_rows(), "1");
    // Once resynced, the next incremental sync has it as newly joined:
    // the full state, every member.
    w.behaviour[0].down.store(false, Ordering::SeqCst);
    eventually("the resync", || w.partial_rows() == "0");
    let since = first["next_batch"].as_str().unwrap();
    let next = sync(&w, Some(since), false);
    let state = next["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let timeline = next["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let members = state
        .iter()
        .chain(&timeline)
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .count();
    assert_eq!(members, 14, "creator, 12 members and alice: {next}");
}

#[test]
fn events_of_the_partial_window_are_rechecked_on_the_full_state() {
    let w = world(1, 10);
    let f = &w.fakes[0];
    let creator = format!("@creator:{}", f.name);
    let (m0, m1) = (format!("@m0:{}", f.name), format!("@m1:{}", f.name));
    let (pl2, m0_join, m1_join, ban, creator_join) = {
        let mut h = w.hosted.lock().unwrap();
        let me = h.find("m.room.member", &creator);
        let creator_join = me.clone().unwrap();
        let m0_join = h.find("m.room.member", &m0).unwrap();
        let m1_join = h.find("m.room.member", &m1);
        // m1 may set state, sets the name (so the partial answer's auth
        // chain holds m1's join), then is banned: a member event, which
        // the partial state omits.
        let mut users = serde_json::Map::new();
        users.insert(m1.clone(), json!(50));
        let pl1 = h.find("m.room.power_levels", "");
        let pl2 = h.add(
            f,
            &creator,
            "m.room.power_levels",
            "",
            json!({ "users": users }),
            &[me.clone(), pl1],
        );
        let auth = [Some(pl2.clone()), m1_join.clone()];
        h.add(
            f,
            &m1,
            "m.room.name",
            "",
            json!({"name": "m1's room"}),
            &auth,
        );
        let ban = h.add(
            f,
            &creator,
            "m.room.member",
            &m1,
            json!({"membership": "ban"}),
            &[me, Some(pl2.clone()), m1_join.clone()],
        );
        (pl2, m0_join, m1_join.unwrap(), ban, creator_join)
    };
    // The full state cannot be fetched yet: the room stays partial.
    w.behaviour[0].down.store(true, Ordering::SeqCst);
    let r = w.join();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let room = w.room();
    // After our join: the banned m1 sets the topic (allowed by what the
    // partial state knows: its own auth events name m1's join), then the
    // creator talks twice (its member event is in the partial answer).
    let (topic, m_1, m_2, pdus) = {
        let mut h = w.hosted.lock().unwrap();
        let join = h.last.clone();
        let (t, tj) = h.extra(
            f,
            &m1,
            "m.room.topic",
            Some(""),
            json!({"topic": "from a banned user"}),
            &[pl2.clone(), m1_join.clone()],
            &join,
        );
        let msg = |n: &str| json!({"msgtype": "m.text", "body": n});
        let auth = [pl2.clone(), creator_join.clone()];
        let (a, aj) = h.extra(f, &creator, "m.room.message", None, msg("one"), &auth, &t);
        let (b, bj) = h.extra(f, &creator, "m.room.message", None, msg("two"), &auth, &a);
        (t, a, b, vec![tj, aj, bj])
    };
    let (status, answer) = common::fed::send_txn(&w.home, f, "partial-window", &pdus, &[]);
    assert_eq!(status, 200, "{answer}");
    let topic_now = || {
        call(
            &w.home.h,
            "GET",
            &format!("/rooms/{}/state/m.room.topic/", enc(&room)),
            &w.alice.token,
            None,
        )
    };
    eventually("the topic is state while partial", || {
        topic_now().status == 200
    });
    eventually("the creator's messages are stored", || {
        w.psql(&format!(
            "SELECT count(*) FROM events WHERE event_id IN ('{m_1}', '{m_2}')"
        )) == "2"
    });
    // The resync: the full state bans m1.
    w.behaviour[0].down.store(false, Ordering::SeqCst);
    eventually("the resync", || w.partial_rows() == "0");
    assert_eq!(
        w.psql(&format!(
            "SELECT count(*) FROM rejected_events WHERE event_id = '{topic}'"
        )),
        "1",
        "the banned user's event is rejected"
    );
    assert_eq!(
        w.psql(&format!(
            "SELECT count(*) FROM events WHERE event_id = '{topic}'"
        )),
        "0"
    );
    let r = topic_now();
    assert_eq!(
        r.status,
        404,
        "not state: {}",
        String::from_utf8_lossy(&r.body)
    );
    let r = call(
        &w.home.h,
        "GET",
        &format!("/rooms/{}/event/{}", enc(&room), enc(&topic)),
        &w.alice.token,
        None,
    );
    assert_eq!(r.status, 404, "not visible");
    assert_eq!(
        w.psql(&format!(
            "SELECT membership FROM current_state WHERE room_id = '{room}' \
             AND type = 'm.room.member' AND state_key = '{m1}'"
        )),
        "ban"
    );
    // The legit events stay, on the full state: the state after the
    // first message (the state at the second) has every member and m1's
    // ban, and no topic.
    let r = call(
        &w.home.h,
        "GET",
        &format!("/rooms/{}/event/{}", enc(&room), enc(&m_2)),
        &w.alice.token,
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (status, at) = common::fed::fed_call(
        &w.home,
        f,
        "GET",
        &format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(&room),
            enc(&m_2)
        ),
        None,
    );
    assert_eq!(status, 200, "{at}");
    let ids: Vec<&str> = at["pdu_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(ids.contains(&ban.as_str()), "full state at the event: {at}");
    assert!(ids.contains(&m0_join.as_str()));
    assert!(!ids.contains(&topic.as_str()), "{at}");
    // creator, m0..m9 (m1 banned), alice, plus 6 other state keys.
    assert!(ids.len() >= 12 + 5, "{} state ids: {at}", ids.len());
    // The room goes on: a send works, on the completed state.
    let (status, _) = w.send("after the re-check");
    assert_eq!(status, 200);
}

/// Resyncs a 150-member room (over the resync's `/state` threshold);
/// returns the `/state` and `/event` requests the resident received.
fn big_resync(state_fails: bool) -> (usize, usize) {
    let w = world(1, 150);
    w.behaviour[0].no_state.store(state_fails, Ordering::SeqCst);
    let r = w.join();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // (Waiting here, not in `/members`: the test client's reads time out
    // at 10 s, a loaded machine's resync may take longer.)
    eventually("the resync", || w.partial_rows() == "0");
    // creator, 150 members, alice.
    assert_eq!(w.members(), 152);
    (
        w.fakes[0].requests("/_matrix/federation/v1/state/").len(),
        w.fakes[0].requests("/_matrix/federation/v1/event/").len(),
    )
}

#[test]
fn a_big_resync_takes_the_state_from_one_state_answer() {
    let (state, events) = big_resync(false);
    assert_eq!(state, 1);
    assert_eq!(events, 0, "every missing event was in the /state answer");
}

#[test]
fn a_big_resync_falls_back_to_event_when_state_fails() {
    let (state, events) = big_resync(true);
    assert_eq!(state, 1);
    assert!(events >= 150, "{events} /event requests");
}

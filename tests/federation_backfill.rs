//! End-to-end: history from other servers (server-server "Backfilling and
//! retrieving missing events"). A federation server of the tests' own
//! (`common::fake_server`, its own key) hosts rooms with history; a hearth
//! user joins them through it (make_join / send_join v2), and
//! `/messages dir=b` pages back through the fake's history: asked with
//! `/backfill`, checked, stored below the join in topological order,
//! never shown by an incremental `/sync`. An answer holding another
//! room's event is refused whole; a server with nothing older is not
//! asked again.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::fake_server::{FakeServer, Received};
use common::fed::{now, pdu, start_home, Home};
use common::{call, enc, ok, register_user, Registered};
use hearth::events::{build_pdu, NewEvent, RoomVersion};
use serde_json::{json, Value};

/// A room as the fake server holds it: its PDUs by id, in creation order,
/// and the state before each.
#[derive(Default, Clone)]
struct FakeRoom {
    id: String,
    order: Vec<String>,
    pdus: HashMap<String, Value>,
    state_before: HashMap<String, Vec<String>>,
    /// The current state, as `fed::pdu` reads it (type, state_key, id).
    state: Vec<Value>,
}

impl FakeRoom {
    fn last(&self) -> String {
        self.order.last().unwrap().clone()
    }

    fn add(&mut self, id: String, ev: Value) {
        let before: Vec<String> = self
            .state
            .iter()
            .map(|s| s["event_id"].as_str().unwrap().to_owned())
            .collect();
        self.state_before.insert(id.clone(), before);
        if let Some(k) = ev.get("state_key").and_then(Value::as_str) {
            let t = ev["type"].as_str().unwrap().to_owned();
            self.state
                .retain(|s| !(s["type"] == t && s["state_key"] == k));
            self.state
                .push(json!({"type": t, "state_key": k, "event_id": id}));
        }
        self.order.push(id.clone());
        self.pdus.insert(id, ev);
    }

    /// An event by the room's creator on the newest one.
    fn send(&mut self, fake: &FakeServer, kind: &str, key: Option<&str>, content: Value) -> String {
        let last = self.last();
        let (id, ev) = pdu(
            fake,
            &self.id,
            &self.state,
            &creator(fake),
            kind,
            key,
            content,
            &[&last],
            &[],
        );
        self.add(id.clone(), ev);
        id
    }

    /// The ids of the state before `id`, and their auth chain (here: every
    /// state event so far, which includes it).
    fn state_ids(&self, id: &str) -> Value {
        let before = self.state_before.get(id).cloned().unwrap_or_default();
        json!({"pdu_ids": before, "auth_chain_ids": before})
    }

    /// What `/backfill?v=..&limit=` answers: the named events and their
    /// ancestors, newest first, at most `limit`.
    fn backfill(&self, vs: &[String], limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut queue: Vec<String> = vs.to_vec();
        let mut seen = std::collections::HashSet::new();
        while let Some(id) = queue.first().cloned() {
            queue.remove(0);
            if out.len() >= limit || !seen.insert(id.clone()) {
                continue;
            }
            let Some(ev) = self.pdus.get(&id) else {
                continue;
            };
            out.push(ev.clone());
            for p in ev["prev_events"].as_array().unwrap() {
                queue.push(p.as_str().unwrap().to_owned());
            }
        }
        out
    }
}

fn creator(fake: &FakeServer) -> String {
    format!("@creator:{}", fake.name)
}

/// A v12 room on the fake server: create, creator's join, power levels,
/// public join rule, shared history, then `messages` messages.
fn fake_room(fake: &FakeServer, messages: usize) -> FakeRoom {
    let content = |v: Value| {
        let Value::Object(m) = v else { panic!() };
        ruma::canonical_json::try_from_json_map(m).unwrap()
    };
    let create = build_pdu(
        NewEvent {
            room_version: RoomVersion::V12,
            room_id: None,
            sender: creator(fake).as_str().try_into().unwrap(),
            event_type: "m.room.create".into(),
            state_key: Some(String::new()),
            content: content(json!({"room_version": "12"})),
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            depth: 1,
            origin_server_ts: now(),
            redacts: None,
        },
        &fake.key,
    )
    .unwrap();
    let create_id = create.event_id.to_string();
    let mut room = FakeRoom {
        id: format!("!{}", &create_id[1..]),
        ..FakeRoom::default()
    };
    room.add(create_id, serde_json::to_value(&create.pdu).unwrap());
    let me = creator(fake);
    room.send(
        fake,
        "m.room.member",
        Some(&me),
        json!({"membership": "join"}),
    );
    room.send(
        fake,
        "m.room.power_levels",
        Some(""),
        json!({"users_default": 0}),
    );
    room.send(
        fake,
        "m.room.join_rules",
        Some(""),
        json!({"join_rule": "public"}),
    );
    room.send(
        fake,
        "m.room.history_visibility",
        Some(""),
        json!({"history_visibility": "shared"}),
    );
    for i in 0..messages {
        room.send(
            fake,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": format!("old {i}")}),
        );
    }
    room
}

/// How the fake answers `/backfill` for a room.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Its history, as asked.
    Honest,
    /// Its history plus an event of another room.
    Mixed,
    /// Nothing.
    Empty,
}

struct World {
    home: Home,
    fake: FakeServer,
    rooms: Arc<Mutex<HashMap<String, (FakeRoom, Mode)>>>,
}

fn room_of(path: &str, prefix: &str) -> Option<String> {
    let rest = path.strip_prefix(prefix)?;
    let seg = rest.split(['/', '?']).next()?;
    Some(percent_decode(seg))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn query_all(path: &str, key: &str) -> Vec<String> {
    let Some((_, q)) = path.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

/// The fake server's answers for the rooms it hosts.
fn answer(rooms: &Mutex<HashMap<String, (FakeRoom, Mode)>>, r: &Received) -> Option<(u16, Value)> {
    let rooms = rooms.lock().unwrap();
    let p = r.path.as_str();
    if p.starts_with("/_matrix/federation/v1/send/") {
        return Some((200, json!({"pdus": {}})));
    }
    if let Some(id) = room_of(p, "/_matrix/federation/v1/make_join/") {
        let (room, _) = rooms.get(&id)?;
        let user = percent_decode(p.split('/').nth(6)?.split('?').next()?);
        let find = |t: &str| {
            room.state
                .iter()
                .find(|s| s["type"] == t)
                .map(|s| s["event_id"].clone())
                .unwrap()
        };
        let template = json!({
            "type": "m.room.member", "state_key": user, "sender": user,
            "room_id": room.id, "content": {"membership": "join"},
            "prev_events": [room.last()],
            "auth_events": [find("m.room.power_levels"), find("m.room.join_rules")],
            "depth": 100, "origin_server_ts": now(),
        });
        return Some((200, json!({"room_version": "12", "event": template})));
    }
    if let Some(id) = room_of(p, "/_matrix/federation/v2/send_join/") {
        let (room, _) = rooms.get(&id)?;
        let state: Vec<Value> = room
            .state
            .iter()
            .map(|s| room.pdus[s["event_id"].as_str().unwrap()].clone())
            .collect();
        return Some((
            200,
            json!({"state": state, "auth_chain": state, "event": r.body,
                   "members_omitted": false}),
        ));
    }
    if let Some(id) = room_of(p, "/_matrix/federation/v1/backfill/") {
        let (room, mode) = rooms.get(&id)?;
        let limit: usize = query_all(p, "limit")
            .first()
            .and_then(|l| l.parse().ok())
            .unwrap_or(10);
        let mut pdus = match mode {
            Mode::Empty => Vec::new(),
            _ => room.backfill(&query_all(p, "v"), limit),
        };
        if *mode == Mode::Mixed {
            let other = rooms.values().find(|(o, _)| o.id != room.id)?;
            pdus.insert(1, other.0.pdus[&other.0.order[5]].clone());
        }
        return Some((
            200,
            json!({"origin": "fake", "origin_server_ts": now(), "pdus": pdus}),
        ));
    }
    if let Some(id) = room_of(p, "/_matrix/federation/v1/state_ids/") {
        let (room, _) = rooms.get(&id)?;
        let at = query_all(p, "event_id").pop()?;
        return Some((200, room.state_ids(&at)));
    }
    if let Some(id) = room_of(p, "/_matrix/federation/v1/event/") {
        let ev = rooms.values().find_map(|(room, _)| room.pdus.get(&id))?;
        return Some((
            200,
            json!({"origin": "fake", "origin_server_ts": now(), "pdus": [ev]}),
        ));
    }
    None
}

fn world() -> World {
    let home = start_home();
    let fake = FakeServer::start(21);
    let rooms: Arc<Mutex<HashMap<String, (FakeRoom, Mode)>>> = Arc::default();
    {
        let rooms = rooms.clone();
        fake.handle(move |r| answer(&rooms, r));
    }
    World { home, fake, rooms }
}

impl World {
    /// A room on the fake with `messages` messages, answered as `mode`.
    fn host(&self, messages: usize, mode: Mode) -> FakeRoom {
        let room = fake_room(&self.fake, messages);
        self.rooms
            .lock()
            .unwrap()
            .insert(room.id.clone(), (room.clone(), mode));
        room
    }

    fn join(&self, user: &Registered, room: &FakeRoom) {
        ok(call(
            &self.home.h,
            "POST",
            &format!(
                "/join/{}?server_name={}",
                enc(&room.id),
                enc(&self.fake.name)
            ),
            &user.token,
            Some(json!({})),
        ));
    }

    fn backfills(&self, room: &FakeRoom) -> usize {
        self.fake
            .requests("/_matrix/federation/v1/backfill/")
            .iter()
            .filter(|r| {
                room_of(&r.path, "/_matrix/federation/v1/backfill/") == Some(room.id.clone())
            })
            .count()
    }

    /// Pages `dir=b` from `from` with `limit` until no `end`: the event ids
    /// in order, and the number of pages.
    fn page_back(
        &self,
        user: &Registered,
        room: &FakeRoom,
        from: &str,
        limit: usize,
    ) -> (Vec<String>, usize) {
        let mut ids = Vec::new();
        let mut from = from.to_owned();
        for pages in 1..100 {
            let v = ok(call(
                &self.home.h,
                "GET",
                &format!(
                    "/rooms/{}/messages?dir=b&limit={limit}&from={}",
                    enc(&room.id),
                    enc(&from)
                ),
                &user.token,
                None,
            ));
            for e in v["chunk"].as_array().unwrap() {
                ids.push(e["event_id"].as_str().unwrap().to_owned());
            }
            match v["end"].as_str() {
                Some(end) => from = end.to_owned(),
                None => return (ids, pages),
            }
        }
        panic!("pagination does not end");
    }
}

fn sync(w: &World, user: &Registered, since: Option<&str>) -> Value {
    let q = since.map_or(String::new(), |s| format!("&since={}", enc(s)));
    ok(call(
        &w.home.h,
        "GET",
        &format!("/sync?timeout=0{q}"),
        &user.token,
        None,
    ))
}

fn own_join(w: &World, user: &Registered, room: &FakeRoom) -> (String, String) {
    let v = sync(w, user, None);
    let tl = &v["rooms"]["join"][&room.id]["timeline"]["events"];
    let join = tl
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == user.id.as_str())
        .unwrap_or_else(|| panic!("no join in {v:#}"))["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (join, v["next_batch"].as_str().unwrap().to_owned())
}

#[test]
fn history_is_backfilled_in_order_and_bad_or_empty_answers_are_remembered() {
    let w = world();
    let alice = register_user(&w.home.h, "alice");
    let room = w.host(30, Mode::Honest);
    w.join(&alice, &room);
    let (join, since) = own_join(&w, &alice, &room);

    // Every page from the sync token back: our join, then the fake's whole
    // history newest first, nothing repeated, nothing skipped.
    let (ids, pages) = w.page_back(&alice, &room, &since, 7);
    let mut want = vec![join.clone()];
    want.extend(room.order.iter().rev().cloned());
    assert_eq!(ids, want, "{pages} pages");
    assert!(pages >= 4, "several pages: {pages}");
    let asked = w.backfills(&room);
    assert!(asked >= 2, "backfilled page by page: {asked}");
    // Paging again reads what is stored: no new request (the create event
    // has no prev events, so nothing is left to ask for).
    let (again, _) = w.page_back(&alice, &room, &since, 13);
    assert_eq!(again, want);
    assert_eq!(w.backfills(&room), asked);
    // Forward from the start: the same events, oldest first.
    let v = ok(call(
        &w.home.h,
        "GET",
        &format!("/rooms/{}/messages?dir=f&limit=100", enc(&room.id)),
        &alice.token,
        None,
    ));
    let fwd: Vec<String> = v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(fwd, rev);
    // A backfilled message is served as the sender wrote it.
    let old = &v["chunk"][5];
    assert_eq!(old["content"]["body"], "old 0", "{old:#}");
    assert_eq!(old["sender"], creator(&w.fake));

    // Not new: an incremental sync shows none of it, and nothing notified.
    let inc = sync(&w, &alice, Some(&since)).to_string();
    for id in &want[1..] {
        assert!(!inc.contains(id.as_str()), "{id} in {inc}");
    }
    let n = ok(call(&w.home.h, "GET", "/notifications", &alice.token, None));
    assert_eq!(n["notifications"], json!([]), "{n:#}");

    // An answer holding another room's event: refused whole.
    let mixed = w.host(10, Mode::Mixed);
    w.join(&alice, &mixed);
    let (mjoin, msince) = own_join(&w, &alice, &mixed);
    let (ids, _) = w.page_back(&alice, &mixed, &msince, 10);
    assert_eq!(ids, vec![mjoin.clone()], "nothing of the refused answer");
    assert_eq!(w.backfills(&mixed), 1);
    for id in &mixed.order {
        let r = call(
            &w.home.h,
            "GET",
            &format!("/rooms/{}/event/{}", enc(&mixed.id), enc(id)),
            &alice.token,
            None,
        );
        assert_eq!(r.status, 404, "{id} stored from a refused answer");
    }
    // ... and that server is not asked again for it.
    let (ids, _) = w.page_back(&alice, &mixed, &msince, 10);
    assert_eq!(ids, vec![mjoin]);
    assert_eq!(w.backfills(&mixed), 1);

    // A server with nothing older: asked once, not on the next page.
    let empty = w.host(5, Mode::Empty);
    w.join(&alice, &empty);
    let (ejoin, esince) = own_join(&w, &alice, &empty);
    let (ids, _) = w.page_back(&alice, &empty, &esince, 10);
    assert_eq!(ids, vec![ejoin.clone()]);
    assert_eq!(w.backfills(&empty), 1);
    let (ids, _) = w.page_back(&alice, &empty, &esince, 10);
    assert_eq!(ids, vec![ejoin]);
    assert_eq!(
        w.backfills(&empty),
        1,
        "asked again after answering nothing"
    );
}

/// A hole in the middle of the timeline (an event whose prev event we
/// never placed: `/get_missing_events` gave nothing) is backfilled when a
/// page of `/messages` crosses it, not only once paging reaches the
/// oldest event: the page shows the missing event in its place.
#[test]
fn a_hole_in_the_middle_of_the_timeline_is_filled_when_a_page_crosses_it() {
    let w = world();
    let alice = register_user(&w.home.h, "alice");
    let mut room = w.host(3, Mode::Honest);
    w.join(&alice, &room);
    let (join, since) = own_join(&w, &alice, &room);
    // The fake learns our join (the body of send_join) and builds on it.
    let join_pdu = w
        .fake
        .requests("/_matrix/federation/v2/send_join/")
        .last()
        .unwrap()
        .body
        .clone();
    room.add(join.clone(), join_pdu);
    // Depths as a real server gives them (our join is at 100).
    let next = |room: &mut FakeRoom, body: &str, depth: u64| {
        let last = room.last();
        let (id, ev) = common::fed::pdu_at(
            &w.fake,
            &room.id,
            &room.state,
            &creator(&w.fake),
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": body}),
            &[&last],
            &[],
            depth,
        );
        room.add(id.clone(), ev);
        id
    };
    let n1 = next(&mut room, "n1", 101);
    let n2 = next(&mut room, "n2", 102);
    let hole = next(&mut room, "in the hole", 103);
    let after = next(&mut room, "after the hole", 104);
    w.rooms
        .lock()
        .unwrap()
        .insert(room.id.clone(), (room.clone(), Mode::Honest));
    let pdus =
        |ids: &[&String]| -> Vec<Value> { ids.iter().map(|i| room.pdus[*i].clone()).collect() };
    assert_eq!(
        common::fed::send_txn(&w.home, &w.fake, "t1", &pdus(&[&n1, &n2]), &[]).0,
        200
    );
    common::fed::eventually("n2 stored", || {
        common::fed::event_visible(&w.home, &alice, &room.id, &n2)
    });
    // Only the event after the hole: the fake has no /get_missing_events.
    assert_eq!(
        common::fed::send_txn(&w.home, &w.fake, "t2", &pdus(&[&after]), &[]).0,
        200
    );
    common::fed::eventually("the event after the hole stored", || {
        common::fed::event_visible(&w.home, &alice, &room.id, &after)
    });
    let before = w.backfills(&room);

    // A page of two from the newest: the event after the hole, then the
    // hole's event (fetched for this page), not n2.
    let v = sync(&w, &alice, Some(&since));
    let newest = v["next_batch"].as_str().unwrap().to_owned();
    let page = ok(call(
        &w.home.h,
        "GET",
        &format!(
            "/rooms/{}/messages?dir=b&limit=2&from={}",
            enc(&room.id),
            enc(&newest)
        ),
        &alice.token,
        None,
    ));
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![after.as_str(), hole.as_str()], "{page:#}");
    assert!(page["end"].is_string(), "more history below: {page:#}");
    assert!(w.backfills(&room) > before, "the hole was asked for");
    // The rest pages on in order, the hole's event once.
    let (rest, _) = w.page_back(&alice, &room, page["end"].as_str().unwrap(), 2);
    assert_eq!(&rest[..3], &[n2.clone(), n1.clone(), join.clone()]);
    assert!(!rest.contains(&hole));
}

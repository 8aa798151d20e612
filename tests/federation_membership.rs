//! End-to-end: the resident side of membership over federation. A
//! federation server of the tests' own (`common::fake_server`, its own
//! key) asks a real hearth for `make_join` / `make_leave` / `make_knock`
//! templates, signs them and sends them back (`send_join` v1 and v2, with
//! and without `omit_members`, `send_leave` v1 and v2, `send_knock`), and
//! invites one of hearth's users (`invite` v2). Checked: the answers'
//! shapes and contents, that each membership is committed before the
//! answer (visible at once to a local client), and the refusals.

mod common;

use common::fake_server::FakeServer;
use common::fed::{fed_call, membership, now, sign_template, start_home, Home};
use common::{call, enc, ok, register_user, Registered};
use hearth::events::{build_pdu, NewEvent, RoomVersion};
use serde_json::{json, Value};

const V12: RoomVersion = RoomVersion::V12;

struct World {
    home: Home,
    fake: FakeServer,
    alice: Registered,
    room: String,
}

fn world(preset: &str) -> World {
    let home = start_home();
    let fake = FakeServer::start(9);
    let alice = register_user(&home.h, "alice");
    let room = ok(call(
        &home.h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": preset, "room_version": "12"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    World {
        home,
        fake,
        alice,
        room,
    }
}

impl World {
    fn user(&self, local: &str) -> String {
        format!("@{local}:{}", self.fake.name)
    }
    fn get(&self, path: &str) -> (u16, Value) {
        fed_call(&self.home, &self.fake, "GET", path, None)
    }
    fn put(&self, path: &str, body: Value) -> (u16, Value) {
        fed_call(&self.home, &self.fake, "PUT", path, Some(body))
    }
    fn make(&self, what: &str, user: &str, query: &str) -> (u16, Value) {
        self.get(&format!(
            "/_matrix/federation/v1/make_{what}/{}/{}{query}",
            enc(&self.room),
            enc(user)
        ))
    }
    /// make_ + sign + send_ (`send_path`: e.g. "v2/send_join").
    fn round_trip(
        &self,
        what: &str,
        user: &str,
        send_path: &str,
        query: &str,
    ) -> (String, u16, Value) {
        let (status, made) = self.make(what, user, "?ver=12");
        assert_eq!(status, 200, "{made}");
        let (id, event) = sign_template(&self.fake, &made["event"], V12);
        let (status, answer) = self.put(
            &format!(
                "/_matrix/federation/{send_path}/{}/{}{query}",
                enc(&self.room),
                enc(&id)
            ),
            event,
        );
        (id, status, answer)
    }
    fn membership(&self, user: &str) -> Option<String> {
        membership(&self.home, &self.alice, &self.room, user)
    }
}

fn types(events: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_remote_user_joins_with_full_and_partial_state_and_leaves() {
    let w = world("public_chat");
    let bob = w.user("bob");

    // The template: bob's join on the room's tail.
    let (status, made) = w.make("join", &bob, "?ver=11&ver=12");
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["room_version"], "12");
    let t = &made["event"];
    assert_eq!(t["type"], "m.room.member");
    assert_eq!(t["state_key"], bob);
    assert_eq!(t["sender"], bob);
    assert_eq!(t["content"]["membership"], "join");
    assert_eq!(t["room_id"], w.room);
    assert!(!t["prev_events"].as_array().unwrap().is_empty());
    assert!(!t["auth_events"].as_array().unwrap().is_empty());

    // send_join v2, full state: the state before the join and its auth
    // chain; bob is joined when the answer arrives.
    let (join, status, answer) = w.round_trip("join", &bob, "v2/send_join", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(w.membership(&bob).as_deref(), Some("join"));
    let st = types(&answer["state"]);
    assert!(st.contains(&("m.room.create".into(), "".into())), "{st:?}");
    assert!(st.contains(&("m.room.member".into(), w.alice.id.clone())));
    assert!(
        !st.contains(&("m.room.member".into(), bob.clone())),
        "state before the join"
    );
    assert!(!answer["auth_chain"].as_array().unwrap().is_empty());
    assert_eq!(answer["members_omitted"], false);
    assert_eq!(answer["event"]["state_key"], bob);
    assert_eq!(hearthless_id(&answer["event"]), join);

    // A retried send_join of the same event: the same answer shape.
    let (status, made) = w.make("join", &w.user("carol"), "?ver=12");
    assert_eq!(status, 200);
    let (cid, cev) = sign_template(&w.fake, &made["event"], V12);
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}?omit_members=true",
        enc(&w.room),
        enc(&cid)
    );
    let (status, partial) = w.put(&path, cev.clone());
    assert_eq!(status, 200, "{partial}");
    // Partial state: no member events but the heroes' (the room has no
    // name), and the servers to ask for the rest.
    assert_eq!(partial["members_omitted"], true);
    let st = types(&partial["state"]);
    let members: Vec<&String> = st
        .iter()
        .filter(|(t, _)| t == "m.room.member")
        .map(|(_, k)| k)
        .collect();
    assert!(members.len() <= 5, "{members:?}");
    assert!(members.contains(&&w.alice.id), "heroes: {members:?}");
    assert!(st.contains(&("m.room.join_rules".into(), "".into())));
    let servers = partial["servers_in_room"].as_array().unwrap();
    assert!(servers.contains(&json!(w.home.name)), "{servers:?}");
    assert!(servers.contains(&json!(w.fake.name)), "{servers:?}");
    let (status, again) = w.put(&path, cev);
    assert_eq!(status, 200, "idempotent: {again}");
    assert_eq!(w.membership(&w.user("carol")).as_deref(), Some("join"));

    // v1 answers `[200, body]`.
    let (_, status, v1) = w.round_trip("join", &w.user("dan"), "v1/send_join", "");
    assert_eq!(status, 200, "{v1}");
    assert_eq!(v1[0], 200);
    assert!(v1[1]["state"].is_array());

    // Leaving: v2 answers {}, v1 [200, {}].
    let (_, status, left) = w.round_trip("leave", &bob, "v2/send_leave", "");
    assert_eq!((status, left), (200, json!({})));
    assert_eq!(w.membership(&bob).as_deref(), Some("leave"));
    let (_, status, left) = w.round_trip("leave", &w.user("dan"), "v1/send_leave", "");
    assert_eq!((status, left), (200, json!([200, {}])));
}

/// The event id of a served event (v12 ids are derived).
fn hearthless_id(ev: &Value) -> String {
    let Value::Object(m) = ev.clone() else {
        panic!()
    };
    let obj = ruma::canonical_json::try_from_json_map(m).unwrap();
    hearth::events::event_id_of(&obj, V12).unwrap().to_string()
}

#[test]
fn joins_are_refused_as_the_rules_say() {
    let w = world("public_chat");
    let bob = w.user("bob");
    // No `ver`: version 1 only, and the room is v12.
    let (status, v) = w.make("join", &bob, "");
    assert_eq!(status, 400);
    assert_eq!(v["errcode"], "M_INCOMPATIBLE_ROOM_VERSION");
    assert_eq!(v["room_version"], "12");
    // A user of another server.
    let (status, v) = w.make("join", "@eve:elsewhere.test", "?ver=12");
    assert_eq!((status, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    // An unknown room.
    let (status, _) = w.get(&format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        enc("!nope:elsewhere.test"),
        enc(&bob)
    ));
    assert_eq!(status, 404);

    let (status, made) = w.make("join", &bob, "?ver=12");
    assert_eq!(status, 200);
    let (id, event) = sign_template(&w.fake, &made["event"], V12);
    let send = |id: &str, ev: Value| {
        w.put(
            &format!(
                "/_matrix/federation/v2/send_join/{}/{}",
                enc(&w.room),
                enc(id)
            ),
            ev,
        )
    };
    // The path's event id must be the event's.
    let (status, v) = send("$wrong", event.clone());
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );
    // A forged signature.
    let mut forged = event.clone();
    forged["signatures"][&w.fake.name] = json!({"ed25519:fake9": "AAAA"});
    let (status, _) = send(&id, forged);
    assert_eq!(status, 403);
    // Not a join.
    let mut tmpl = made["event"].clone();
    tmpl["content"]["membership"] = json!("leave");
    let (lid, lev) = sign_template(&w.fake, &tmpl, V12);
    let (status, v) = send(&lid, lev);
    assert_eq!(status, 400, "{v}");
    assert_eq!(w.membership(&bob), None);

    // Banned: no template.
    ok(call(
        &w.home.h,
        "POST",
        &format!("/rooms/{}/ban", w.room),
        &w.alice.token,
        Some(json!({"user_id": bob})),
    ));
    let (status, v) = w.make("join", &bob, "?ver=12");
    assert_eq!(status, 403, "{v}");

    // Invite-only room: no template for an uninvited user.
    let w2 = world("private_chat");
    let (status, v) = w2.make("join", &w2.user("bob"), "?ver=12");
    assert_eq!(status, 403, "{v}");
}

#[test]
fn knocking_and_remote_invites() {
    let w = world("private_chat");
    ok(call(
        &w.home.h,
        "PUT",
        &format!("/rooms/{}/state/m.room.join_rules/", w.room),
        &w.alice.token,
        Some(json!({"join_rule": "knock"})),
    ));
    let bob = w.user("bob");
    let (_, status, knocked) = w.round_trip("knock", &bob, "v1/send_knock", "");
    assert_eq!(status, 200, "{knocked}");
    let st = types(&knocked["knock_room_state"]);
    assert!(
        st.contains(&("m.room.join_rules".into(), "".into())),
        "{st:?}"
    );
    assert!(st.contains(&("m.room.create".into(), "".into())), "{st:?}");
    // Full PDUs, as the spec wants since v1.16.
    for e in knocked["knock_room_state"].as_array().unwrap() {
        assert!(
            e["signatures"].is_object() && e["hashes"].is_object(),
            "{e}"
        );
    }
    assert_eq!(w.membership(&bob).as_deref(), Some("knock"));

    // The fake server invites alice to a room it hosts (v10): hearth
    // co-signs and keeps the invite.
    let room = format!("!elsewhere:{}", w.fake.name);
    let inviter = w.user("host");
    let content = ruma::canonical_json::try_from_json_map(
        json!({"membership": "invite"}).as_object().unwrap().clone(),
    )
    .unwrap();
    let signed = build_pdu(
        NewEvent {
            room_version: RoomVersion::V10,
            room_id: Some(room.as_str().try_into().unwrap()),
            sender: inviter.as_str().try_into().unwrap(),
            event_type: "m.room.member".into(),
            state_key: Some(w.alice.id.clone()),
            content,
            prev_events: vec!["$prev:x".try_into().unwrap()],
            auth_events: vec!["$auth:x".try_into().unwrap()],
            depth: 5,
            origin_server_ts: now(),
            redacts: None,
        },
        &w.fake.key,
    )
    .unwrap();
    let id = signed.event_id.to_string();
    let event = serde_json::to_value(&signed.pdu).unwrap();
    let path = format!("/_matrix/federation/v2/invite/{}/{}", enc(&room), enc(&id));
    let (status, answer) = w.put(
        &path,
        json!({"room_version": "10", "event": event, "invite_room_state": []}),
    );
    assert_eq!(status, 200, "{answer}");
    let sigs = answer["event"]["signatures"].as_object().unwrap();
    assert!(
        sigs.contains_key(&w.fake.name) && sigs.contains_key(&w.home.name),
        "{sigs:?}"
    );

    // Refused: an unknown invitee, an unknown room version.
    let mut tmpl = signed.pdu.clone();
    tmpl.insert(
        "state_key".into(),
        ruma::canonical_json::CanonicalJsonValue::String(format!("@nobody:{}", w.home.name)),
    );
    hearth::events::hash_and_sign(&mut tmpl, RoomVersion::V10, &w.fake.key).unwrap();
    let nid = hearth::events::event_id_of(&tmpl, RoomVersion::V10).unwrap();
    let (status, _) = w.put(
        &format!(
            "/_matrix/federation/v2/invite/{}/{}",
            enc(&room),
            enc(nid.as_str())
        ),
        json!({"room_version": "10", "event": tmpl, "invite_room_state": []}),
    );
    assert_eq!(status, 404);
    let (status, v) = w.put(
        &path,
        json!({"room_version": "999", "event": event, "invite_room_state": []}),
    );
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INCOMPATIBLE_ROOM_VERSION"))
    );
}

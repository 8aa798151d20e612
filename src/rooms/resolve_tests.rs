//! State resolution on hand-built forks (events with real reference-hash
//! ids, unsigned: resolution does not look at signatures).

use serde_json::{json, Value};

use super::*;
use crate::events::event_id_of;

/// A room built by hand: events with ids, and the state after each.
struct Room {
    version: RoomVersion,
    room_id: String,
    events: EventMap,
    after: HashMap<OwnedEventId, StateMap>,
    ts: u64,
}

const ALICE: &str = "@alice:a.test";
const BOB: &str = "@bob:b.test";
const CAROL: &str = "@carol:c.test";

impl Room {
    /// create, alice's join, power levels (alice 100, plus `extra`), public
    /// join rules.
    fn new(version: RoomVersion, extra_users: Value) -> (Room, OwnedEventId) {
        let mut r = Room {
            version,
            room_id: String::new(),
            events: EventMap::new(),
            after: HashMap::new(),
            ts: 1,
        };
        let mut content = json!({ "room_version": version.as_str() });
        if version.create_content_has_creator() {
            content["creator"] = ALICE.into();
        }
        let create = r.add(ALICE, "m.room.create", Some(""), content, &[]);
        let join = r.add(
            ALICE,
            "m.room.member",
            Some(ALICE),
            json!({"membership": "join"}),
            &[&create],
        );
        let mut users = json!({ ALICE: 100 });
        if version.creators_have_infinite_power() {
            users = json!({});
        }
        for (u, l) in extra_users.as_object().cloned().unwrap_or_default() {
            users[u] = l;
        }
        let pl = r.add(
            ALICE,
            "m.room.power_levels",
            Some(""),
            json!({ "users": users }),
            &[&join],
        );
        let jr = r.add(
            ALICE,
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "public"}),
            &[&pl],
        );
        (r, jr)
    }

    /// Adds an event after `prev` (state before = resolution of the prevs'
    /// states), with auth events picked from that state as the spec says.
    fn add(
        &mut self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[&OwnedEventId],
    ) -> OwnedEventId {
        let before = self.state_before(prev);
        let is_create = kind == "m.room.create";
        let rules = &self.version.rules().authorization;
        let raw = serde_json::value::to_raw_value(&content).unwrap();
        let sender_id = ruma::OwnedUserId::try_from(sender).unwrap();
        let mut auth: Vec<String> =
            state_res::auth_types_for_event(&kind.into(), &sender_id, state_key, &raw, rules)
                .unwrap()
                .into_iter()
                .filter_map(|(t, k)| before.get(&(t.to_string(), k)).cloned())
                .collect();
        auth.sort();
        auth.dedup();
        let depth = prev
            .iter()
            .map(|p| self.events[*p].depth)
            .max()
            .unwrap_or(0)
            + 1;
        self.ts += 1;
        let mut j = json!({
            "type": kind, "sender": sender, "content": content,
            "prev_events": prev.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "auth_events": auth, "depth": depth, "origin_server_ts": self.ts,
            "hashes": {"sha256": "x"}, "signatures": {},
        });
        if let Some(k) = state_key {
            j["state_key"] = k.into();
        }
        if !(is_create && self.version.room_id_from_create_event()) {
            j["room_id"] = self.room_id.clone().into();
        }
        let Value::Object(m) = j else { unreachable!() };
        let json = ruma::canonical_json::try_from_json_map(m).unwrap();
        let id = event_id_of(&json, self.version).unwrap();
        if is_create {
            self.room_id = if self.version.room_id_from_create_event() {
                format!("!{}", id.as_str().trim_start_matches('$'))
            } else {
                "!room:a.test".to_owned()
            };
            if !self.version.room_id_from_create_event() {
                // Rebuild with the room id in place.
                let mut json = json;
                json.insert("room_id".into(), self.room_id.clone().into());
                let id = event_id_of(&json, self.version).unwrap();
                return self.insert(id, json, before);
            }
        }
        self.insert(id, json, before)
    }

    fn insert(
        &mut self,
        id: OwnedEventId,
        json: ruma::CanonicalJsonObject,
        before: StateMap,
    ) -> OwnedEventId {
        let pdu = Pdu::from_json(id.clone(), json, self.version).unwrap();
        let mut after = before;
        if let Some(k) = &pdu.state_key {
            after.insert((pdu.kind.to_string(), k.clone()), id.to_string());
        }
        self.events.insert(id.clone(), pdu);
        self.after.insert(id.clone(), after);
        id
    }

    fn state_before(&self, prev: &[&OwnedEventId]) -> StateMap {
        let states: Vec<&StateMap> = prev.iter().map(|p| &self.after[*p]).collect();
        resolve(self.version, &states, &self.events).unwrap()
    }

    fn resolved(&self, tips: &[&OwnedEventId]) -> StateMap {
        let fwd = self.state_before(tips);
        let mut rev: Vec<&OwnedEventId> = tips.to_vec();
        rev.reverse();
        assert_eq!(
            fwd,
            self.state_before(&rev),
            "resolution depends on input order"
        );
        fwd
    }

    fn get(state: &StateMap, t: &str, k: &str) -> Option<OwnedEventId> {
        state
            .get(&(t.to_owned(), k.to_owned()))
            .map(|s| OwnedEventId::try_from(s.as_str()).unwrap())
    }

    fn join(&mut self, user: &str, prev: &OwnedEventId) -> OwnedEventId {
        self.add(
            user,
            "m.room.member",
            Some(user),
            json!({"membership": "join"}),
            &[prev],
        )
    }
}

const VERSIONS: [RoomVersion; 3] = [RoomVersion::V10, RoomVersion::V11, RoomVersion::V12];

#[test]
fn one_state_and_equal_states_resolve_to_themselves() {
    let (r, tip) = Room::new(RoomVersion::V11, json!({}));
    let s = r.after[&tip].clone();
    assert_eq!(resolve(r.version, &[&s], &r.events).unwrap(), s);
    assert_eq!(resolve(r.version, &[&s, &s], &r.events).unwrap(), s);
    assert!(resolve(r.version, &[], &r.events).unwrap().is_empty());
}

/// Two servers change power levels concurrently: alice (100) demotes bob,
/// bob (50, enough for state events) promotes carol. Power events apply in
/// reverse topological power order (the more powerful sender first);
/// alice's comes first, so bob has no power left and his change fails.
#[test]
fn concurrent_power_level_changes() {
    for v in VERSIONS {
        let (mut r, tip) = Room::new(v, json!({ BOB: 50 }));
        let bob = r.join(BOB, &tip);
        let carol = r.join(CAROL, &bob);
        let mut demote = json!({ "users": { ALICE: 100, BOB: 0 } });
        let mut promote = json!({ "users": { ALICE: 100, BOB: 50, CAROL: 50 } });
        if v.creators_have_infinite_power() {
            demote = json!({ "users": { BOB: 0 } });
            promote = json!({ "users": { BOB: 50, CAROL: 50 } });
        }
        let a = r.add(ALICE, "m.room.power_levels", Some(""), demote, &[&carol]);
        let b = r.add(BOB, "m.room.power_levels", Some(""), promote, &[&carol]);
        let s = r.resolved(&[&a, &b]);
        assert_eq!(Room::get(&s, "m.room.power_levels", ""), Some(a), "v{v}");
        // Alone, bob's change stands.
        let s = r.resolved(&[&carol, &b]);
        assert_eq!(Room::get(&s, "m.room.power_levels", ""), Some(b), "v{v}");
    }
}

/// A ban races bob's topic change: the ban is a power event and applies
/// first; bob's topic then fails auth and the older topic stays.
#[test]
fn ban_races_a_state_change() {
    for v in VERSIONS {
        let (mut r, tip) = Room::new(v, json!({ BOB: 50 }));
        let t0 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "t0"}),
            &[&tip],
        );
        let bob = r.join(BOB, &t0);
        let ban = r.add(
            ALICE,
            "m.room.member",
            Some(BOB),
            json!({"membership": "ban"}),
            &[&bob],
        );
        let topic = r.add(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "bob's"}),
            &[&bob],
        );
        let s = r.resolved(&[&ban, &topic]);
        assert_eq!(Room::get(&s, "m.room.member", BOB), Some(ban), "v{v}");
        assert_eq!(Room::get(&s, "m.room.topic", ""), Some(t0), "v{v}");
    }
}

/// Two users join concurrently while alice makes the room invite-only: the
/// join rule change is a power event (applied first), so both joins fail
/// against the resolved join rules.
#[test]
fn concurrent_joins_and_a_join_rule_change() {
    for v in VERSIONS {
        let (mut r, tip) = Room::new(v, json!({}));
        let invite = r.add(
            ALICE,
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "invite"}),
            &[&tip],
        );
        let bob = r.join(BOB, &tip);
        let carol = r.join(CAROL, &tip);
        let s = r.resolved(&[&invite, &bob, &carol]);
        assert_eq!(
            Room::get(&s, "m.room.join_rules", ""),
            Some(invite.clone()),
            "v{v}"
        );
        assert_eq!(Room::get(&s, "m.room.member", BOB), None, "v{v}");
        assert_eq!(Room::get(&s, "m.room.member", CAROL), None, "v{v}");
        // Without the join rule change both joins stand.
        let s = r.resolved(&[&bob, &carol]);
        assert_eq!(Room::get(&s, "m.room.member", BOB), Some(bob), "v{v}");
        assert_eq!(Room::get(&s, "m.room.member", CAROL), Some(carol), "v{v}");
    }
}

/// A fork three deep on one side: alice's three topic changes against
/// bob's name change. Topic: mainline order, then timestamp (the latest
/// wins); the name, set on one side only, passes auth and stays.
#[test]
fn fork_three_deep() {
    for v in VERSIONS {
        let (mut r, tip) = Room::new(v, json!({ BOB: 50 }));
        let bob = r.join(BOB, &tip);
        let t1 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "1"}),
            &[&bob],
        );
        let t2 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "2"}),
            &[&t1],
        );
        let t3 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "3"}),
            &[&t2],
        );
        let name = r.add(BOB, "m.room.name", Some(""), json!({"name": "n"}), &[&bob]);
        let s = r.resolved(&[&t3, &name]);
        assert_eq!(Room::get(&s, "m.room.topic", ""), Some(t3.clone()), "v{v}");
        assert_eq!(Room::get(&s, "m.room.name", ""), Some(name.clone()), "v{v}");
        // Closing the fork: an event on both tips sees the same state.
        let merge = r.add(
            ALICE,
            "m.room.message",
            None,
            json!({"body": "m"}),
            &[&t3, &name],
        );
        assert_eq!(r.after[&merge], s);
        // Demoting bob deep in alice's branch defeats bob's name change.
        let mut demote = json!({ "users": { ALICE: 100, BOB: 0 } });
        if v.creators_have_infinite_power() {
            demote = json!({ "users": { BOB: 0 } });
        }
        let d1 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "d1"}),
            &[&bob],
        );
        let d2 = r.add(ALICE, "m.room.power_levels", Some(""), demote, &[&d1]);
        let d3 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "d3"}),
            &[&d2],
        );
        let s = r.resolved(&[&d3, &name]);
        assert_eq!(Room::get(&s, "m.room.power_levels", ""), Some(d2), "v{v}");
        assert_eq!(Room::get(&s, "m.room.name", ""), None, "v{v}");
        assert_eq!(Room::get(&s, "m.room.topic", ""), Some(d3), "v{v}");
    }
}

#[test]
fn auth_chain_and_subgraph() {
    let (mut r, tip) = Room::new(RoomVersion::V12, json!({ BOB: 50 }));
    let bob = r.join(BOB, &tip);
    let pl = r.events[&tip].auth_events.clone();
    let chain = auth_chain([&bob], &r.events);
    for id in &pl {
        assert!(chain.contains(id));
    }
    assert!(!chain.contains(&bob));
    // bob's join and a later change of his membership by alice: the path
    // between them (bob's join is an auth event of the kick) is in the
    // subgraph.
    let kick = r.add(
        ALICE,
        "m.room.member",
        Some(BOB),
        json!({"membership": "leave"}),
        &[&bob],
    );
    let sub = conflicted_subgraph([&bob, &kick], &r.events);
    assert!(sub.contains(&bob) && sub.contains(&kick));
    let unrelated = conflicted_subgraph([&kick], &r.events);
    assert_eq!(unrelated.len(), 1);
}

#[test]
fn concurrent_topics_the_later_wins() {
    for v in VERSIONS {
        let (mut r, tip) = Room::new(v, json!({ BOB: 50 }));
        let bob = r.join(BOB, &tip);
        let a = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "a"}),
            &[&bob],
        );
        let b = r.add(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "b"}),
            &[&bob],
        );
        let s = r.resolved(&[&a, &b]);
        assert_eq!(Room::get(&s, "m.room.topic", ""), Some(b), "v{v}");
    }
}

/// Power levels content `users`, with alice at 100 where the room version
/// lets creators be listed (v12 creators have infinite power instead).
fn users(v: RoomVersion, others: Value) -> Value {
    let mut u = others;
    if !v.creators_have_infinite_power() {
        u[ALICE] = 100.into();
    }
    json!({ "users": u })
}

const ZARA: &str = "@zara:z.test";

/// The worked examples of state resolution v2 (MSC1442, the proposal the
/// spec's algorithm comes from; Synapse's `tests/state/test_v2.py` carries
/// them): the room starts with alice (100), bob, carol and zara joined.
fn example_room(v: RoomVersion) -> (Room, OwnedEventId) {
    let (mut r, tip) = Room::new(v, json!({}));
    let b = r.join(BOB, &tip);
    let c = r.join(CAROL, &b);
    let z = r.join(ZARA, &c);
    (r, z)
}

/// "Offtopic power levels": alice gives bob 50, bob gives carol 50, carol
/// demotes herself; a fork holding only alice's change does not undo the
/// chain that builds on it.
#[test]
fn example_offtopic_power_levels() {
    for v in VERSIONS {
        let (mut r, start) = example_room(v);
        let pa = r.add(
            ALICE,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 50 })),
            &[&start],
        );
        let pb_c = users(v, json!({ BOB: 50, CAROL: 50 }));
        let pb = r.add(BOB, "m.room.power_levels", Some(""), pb_c, &[&pa]);
        let pc_c = users(v, json!({ BOB: 50, CAROL: 0 }));
        let pc = r.add(CAROL, "m.room.power_levels", Some(""), pc_c, &[&pb]);
        let s = r.resolved(&[&pc, &pa]);
        assert_eq!(Room::get(&s, "m.room.power_levels", ""), Some(pc), "v{v}");
    }
}

/// "Topic basic": alice promotes bob, sets a topic, demotes bob; bob's
/// concurrent power change and topic (on the branch where he still had
/// power) lose: alice's second topic and her demotion stand.
#[test]
fn example_topic_basic() {
    for v in VERSIONS {
        let (mut r, start) = example_room(v);
        let t1 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "T1"}),
            &[&start],
        );
        let pa1 = r.add(
            ALICE,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 50 })),
            &[&t1],
        );
        let t2 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "T2"}),
            &[&pa1],
        );
        let pa2 = r.add(
            ALICE,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 0 })),
            &[&t2],
        );
        let pb = r.add(
            BOB,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 50 })),
            &[&pa1],
        );
        let t3 = r.add(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "T3"}),
            &[&pb],
        );
        let s = r.resolved(&[&pa2, &t3]);
        assert_eq!(Room::get(&s, "m.room.topic", ""), Some(t2), "v{v}");
        assert_eq!(Room::get(&s, "m.room.power_levels", ""), Some(pa2), "v{v}");
    }
}

/// "Topic reset": bob (promoted) sets a topic, then alice bans him; against
/// a fork that only knows alice's first topic, the ban stands and bob's
/// topic, no longer authorised, falls back to alice's.
#[test]
fn example_topic_reset() {
    for v in VERSIONS {
        let (mut r, start) = example_room(v);
        let t1 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "T1"}),
            &[&start],
        );
        let pa = r.add(
            ALICE,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 50 })),
            &[&t1],
        );
        let t2 = r.add(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "T2"}),
            &[&pa],
        );
        let ban = json!({"membership": "ban"});
        let mb = r.add(ALICE, "m.room.member", Some(BOB), ban, &[&t2]);
        let s = r.resolved(&[&mb, &t1]);
        assert_eq!(Room::get(&s, "m.room.topic", ""), Some(t1), "v{v}");
        assert_eq!(Room::get(&s, "m.room.member", BOB), Some(mb), "v{v}");
        assert_eq!(Room::get(&s, "m.room.power_levels", ""), Some(pa), "v{v}");
    }
}

/// "Topic": as "topic basic", but zara's message closes the fork and alice
/// sets a topic after it: the state at the merge (alice's demotion beats
/// bob's change) decides what comes after.
#[test]
fn example_topic_after_a_merge() {
    for v in VERSIONS {
        let (mut r, start) = example_room(v);
        let t1 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "T1"}),
            &[&start],
        );
        let pa1 = r.add(
            ALICE,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 50 })),
            &[&t1],
        );
        let t2 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "T2"}),
            &[&pa1],
        );
        let pa2 = r.add(
            ALICE,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 0 })),
            &[&t2],
        );
        let pb = r.add(
            BOB,
            "m.room.power_levels",
            Some(""),
            users(v, json!({ BOB: 50 })),
            &[&pa1],
        );
        let t3 = r.add(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "T3"}),
            &[&pb],
        );
        let mz1 = r.add(
            ZARA,
            "m.room.message",
            None,
            json!({"body": "m"}),
            &[&pa2, &t3],
        );
        let t4 = r.add(
            ALICE,
            "m.room.topic",
            Some(""),
            json!({"topic": "T4"}),
            &[&mz1],
        );
        let s = r.resolved(&[&t4, &mz1]);
        assert_eq!(Room::get(&s, "m.room.topic", ""), Some(t4), "v{v}");
        assert_eq!(
            Room::get(&s, "m.room.power_levels", ""),
            Some(pa2.clone()),
            "v{v}"
        );
        assert_eq!(
            Room::get(&r.after[&mz1], "m.room.power_levels", ""),
            Some(pa2),
            "v{v}"
        );
    }
}

//! A big room hosted by a simulated remote server ([`RemoteServer`]), for
//! `fed-join`: built and signed before the run, then served as a resident
//! server serves a joiner (server-server "Joining Rooms"): `make_join`,
//! `send_join` v1/v2 with and without `omit_members`, `/state_ids` and
//! `/state` at any event, `/event_auth`; `/event/{id}` comes from the
//! remote's common store.
//!
//! Shape: create, the creator's join, power levels, public join rules,
//! shared history, a name; then `members` joins (one user each, all of the
//! remote server) and state events of a custom type until the room holds
//! `state_events`. A linear chain (each event's prev is the one before), so
//! the state before the k-th event is every state event before it (each
//! state key is used once).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hearth::events::{build_pdu, NewEvent, RoomVersion};
use serde_json::{json, Value};

use crate::remote_server::{percent_decode, Handler, RemoteServer};
use crate::scenario::fed_common::{runtime_err, to_canonical};

pub struct HostedRoom {
    pub room_id: String,
    pub version: RoomVersion,
    pub server: String,
    /// Every event in order: (id, is state, is a membership).
    order: Vec<(String, bool, bool)>,
    index: HashMap<String, usize>,
    events: HashMap<String, Value>,
    head: (String, u64),
    /// create, join rules, power levels: a join's auth events.
    join_auth: Vec<String>,
    /// The auth chain of every state event here (create, creator's join,
    /// power levels, join rules).
    chain: Vec<String>,
}

impl HostedRoom {
    /// Builds and signs the room (not timed by the caller's measurement).
    pub fn build(
        remote: &RemoteServer,
        run: &str,
        members: usize,
        state_events: usize,
        version: RoomVersion,
    ) -> anyhow::Result<HostedRoom> {
        let server = remote.name.clone();
        let room_id = format!("!hbjoin{run}:{server}");
        let creator = format!("@hbcreator{run}:{server}");
        let mut room = HostedRoom {
            room_id: room_id.clone(),
            version,
            server,

            order: Vec::new(),
            index: HashMap::new(),
            events: HashMap::new(),
            head: (String::new(), 0),
            join_auth: Vec::new(),
            chain: Vec::new(),
        };
        let add = |room: &mut HostedRoom,
                   sender: &str,
                   kind: &str,
                   key: &str,
                   content: Value,
                   auth: Vec<String>|
         -> anyhow::Result<String> {
            let depth = room.head.1 + 1;
            let prev = if room.head.0.is_empty() {
                Vec::new()
            } else {
                vec![room.head.0.as_str().try_into().map_err(runtime_err)?]
            };
            let signed = build_pdu(
                NewEvent {
                    room_version: version,
                    room_id: Some(room_id.as_str().try_into().map_err(runtime_err)?),
                    sender: sender.try_into().map_err(runtime_err)?,
                    event_type: kind.into(),
                    state_key: Some(key.to_owned()),
                    content: to_canonical(&content)?,
                    prev_events: prev,
                    auth_events: auth
                        .iter()
                        .map(|x| x.as_str().try_into().map_err(runtime_err))
                        .collect::<anyhow::Result<_>>()?,
                    depth,
                    origin_server_ts: hearth::primitives::unix_ms(),
                    redacts: None,
                },
                &remote.key,
            )
            .map_err(runtime_err)?;
            let id = signed.event_id.to_string();
            let v = serde_json::to_value(&signed.pdu)?;
            room.push(id.clone(), v, true, kind == "m.room.member");
            room.head = (id.clone(), depth);
            Ok(id)
        };
        let create = add(
            &mut room,
            &creator,
            "m.room.create",
            "",
            json!({"creator": creator, "room_version": version.as_str()}),
            vec![],
        )?;
        let cj = add(
            &mut room,
            &creator,
            "m.room.member",
            &creator,
            json!({"membership": "join"}),
            vec![create.clone()],
        )?;
        let pl = add(
            &mut room,
            &creator,
            "m.room.power_levels",
            "",
            json!({"users": {creator.clone(): 100}, "users_default": 0, "events_default": 0,
                   "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0}),
            vec![create.clone(), cj.clone()],
        )?;
        let base = vec![create.clone(), cj.clone(), pl.clone()];
        let jr = add(
            &mut room,
            &creator,
            "m.room.join_rules",
            "",
            json!({"join_rule": "public"}),
            base.clone(),
        )?;
        add(
            &mut room,
            &creator,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "shared"}),
            base.clone(),
        )?;
        add(
            &mut room,
            &creator,
            "m.room.name",
            "",
            json!({"name": format!("fed-join {run}")}),
            base.clone(),
        )?;
        room.join_auth = vec![create.clone(), jr.clone(), pl.clone()];
        room.chain = vec![create, cj, pl, jr];
        let join_auth = room.join_auth.clone();
        for i in 0..members {
            let user = format!("@hbm{run}x{i}:{}", room.server);
            add(
                &mut room,
                &user,
                "m.room.member",
                &user,
                json!({"membership": "join", "displayname": format!("member {i}")}),
                join_auth.clone(),
            )?;
        }
        let mut j = 0;
        while room.order.len() < state_events {
            add(
                &mut room,
                &creator,
                "hb.bench.state",
                &format!("k{j}"),
                json!({"n": j}),
                base.clone(),
            )?;
            j += 1;
        }
        let mut store = remote.store.write().unwrap_or_else(|e| e.into_inner());
        for (id, v) in &room.events {
            store.insert(id.clone(), v.clone());
        }
        Ok(room)
    }

    fn push(&mut self, id: String, v: Value, state: bool, member: bool) {
        self.index.insert(id.clone(), self.order.len());
        self.order.push((id.clone(), state, member));
        self.events.insert(id, v);
    }

    /// The state before event `at` (the head when `None`): ids, without
    /// memberships when `omit_members`.
    fn state_before(&self, at: Option<&str>, omit_members: bool) -> Option<Vec<&str>> {
        let end = match at {
            Some(id) => *self.index.get(id)?,
            None => self.order.len(),
        };
        Some(
            self.order[..end]
                .iter()
                .filter(|(_, s, m)| *s && !(omit_members && *m))
                .map(|(id, _, _)| id.as_str())
                .collect(),
        )
    }

    fn pdus(&self, ids: &[&str]) -> Vec<&Value> {
        ids.iter().filter_map(|id| self.events.get(*id)).collect()
    }

    /// The routes to install on the remote (`RemoteServer::set_routes`).
    pub fn routes(room: Arc<RwLock<HostedRoom>>, remote: &RemoteServer) -> Handler {
        let store = remote.store.clone();
        Arc::new(move |method, path, body| {
            let (p, query) = path.split_once('?').unwrap_or((path, ""));
            let q = |k: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(a, _)| *a == k)
                    .map(|(_, v)| percent_decode(v))
            };
            let segs: Vec<String> = p
                .trim_start_matches("/_matrix/federation/")
                .split('/')
                .map(percent_decode)
                .collect();
            let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
            let ok = |v: Value| Some((200u16, v.to_string().into_bytes()));
            let not_found = || {
                Some((
                    404u16,
                    br#"{"errcode":"M_NOT_FOUND","error":"not in this room"}"#.to_vec(),
                ))
            };
            match (method, segs.as_slice()) {
                ("GET", ["v1", "make_join", r, user]) => {
                    let room = room.read().unwrap_or_else(|e| e.into_inner());
                    if *r != room.room_id {
                        return not_found();
                    }
                    ok(json!({"room_version": room.version.as_str(), "event": {
                        "type": "m.room.member", "state_key": user, "sender": user,
                        "room_id": room.room_id, "content": {"membership": "join"},
                        "prev_events": [room.head.0], "auth_events": room.join_auth,
                        "depth": room.head.1 + 1, "origin": room.server,
                        "origin_server_ts": hearth::primitives::unix_ms()}}))
                }
                ("PUT", [v, "send_join", r, id]) if *v == "v1" || *v == "v2" => {
                    let Ok(ev) = serde_json::from_slice::<Value>(body) else {
                        return Some((400, br#"{"errcode":"M_BAD_JSON","error":"no"}"#.to_vec()));
                    };
                    let omit = q("omit_members").as_deref() == Some("true");
                    let mut room = room.write().unwrap_or_else(|e| e.into_inner());
                    if *r != room.room_id {
                        return not_found();
                    }
                    let state = room.state_before(None, omit).unwrap_or_default();
                    let in_state: std::collections::HashSet<&str> = state.iter().copied().collect();
                    let chain: Vec<&str> = room
                        .chain
                        .iter()
                        .map(String::as_str)
                        .filter(|c| !omit || !in_state.contains(c))
                        .collect();
                    let answer = json!({"origin": room.server, "event": ev,
                        "state": room.pdus(&state), "auth_chain": room.pdus(&chain),
                        "members_omitted": omit, "servers_in_room": [room.server]});
                    let bytes = if *v == "v1" {
                        json!([200, answer]).to_string()
                    } else {
                        answer.to_string()
                    };
                    // The joiner's join is the room's new head.
                    let depth = room.head.1 + 1;
                    store
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((*id).to_owned(), ev.clone());
                    room.push((*id).to_owned(), ev, true, true);
                    room.head = ((*id).to_owned(), depth);
                    Some((200, bytes.into_bytes()))
                }
                ("GET", ["v1", kind, r]) if *kind == "state_ids" || *kind == "state" => {
                    let room = room.read().unwrap_or_else(|e| e.into_inner());
                    let at = q("event_id");
                    let Some(state) = room.state_before(at.as_deref(), false) else {
                        return not_found();
                    };
                    if *r != room.room_id {
                        return not_found();
                    }
                    if *kind == "state_ids" {
                        ok(json!({"pdu_ids": state, "auth_chain_ids": room.chain}))
                    } else {
                        let chain: Vec<&str> = room.chain.iter().map(String::as_str).collect();
                        ok(json!({"pdus": room.pdus(&state), "auth_chain": room.pdus(&chain)}))
                    }
                }
                ("GET", ["v1", "event_auth", r, _]) => {
                    let room = room.read().unwrap_or_else(|e| e.into_inner());
                    if *r != room.room_id {
                        return not_found();
                    }
                    let chain: Vec<&str> = room.chain.iter().map(String::as_str).collect();
                    ok(json!({"auth_chain": room.pdus(&chain)}))
                }
                _ => None,
            }
        })
    }
}

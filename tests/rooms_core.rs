//! The room core on real PostgreSQL, without HTTP: two shards wired by a
//! real mesh, each with its own pool, group-commit writer and room service.

mod db_support;

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hearth::db::{
    migrate, ConnectConfig, Connection, GroupCommit, GroupCommitConfig, Pool, PoolConfig,
};
use hearth::events::ServerKey;
use hearth::mesh::{shard_for_room, Mesh, MeshEndpoint};
use hearth::rooms::client::{self, create_room, send_event, set_membership};
use hearth::rooms::create::CreateRoomRequest;
use hearth::rooms::{self, state, EventRequest, RoomError, Rooms};
use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId};

fn key() -> Arc<ServerKey> {
    let name = OwnedServerName::try_from("localhost").unwrap();
    Arc::new(ServerKey::from_seed(name, "test", &[7; 32]).unwrap())
}

async fn open_rooms(
    cfg: ConnectConfig,
    shard: usize,
    n: usize,
    mesh: Rc<MeshEndpoint>,
) -> Rc<Rooms> {
    let pool = Pool::connect(cfg, PoolConfig::default()).await.unwrap();
    let writer = GroupCommit::new(pool.clone(), GroupCommitConfig::default());
    let (stream, _notifier) = hearth::stream::open(&pool, shard, n).await.unwrap();
    let rooms = Rc::new(
        Rooms::open(shard, n, pool, writer, key(), stream.clone())
            .await
            .unwrap(),
    );
    rooms::install(rooms.clone());
    mesh.spawn_receiver();
    monoio::spawn(stream.run_announcer(mesh));
    rooms
}

/// Runs `body` on shard 0 of a 2-shard mesh over a fresh migrated database.
fn with_shards<F, Fut>(body: F)
where
    F: FnOnce(ConnectConfig, Rc<MeshEndpoint>, Rc<Rooms>) -> Fut,
    Fut: Future<Output = ()>,
{
    let cfg = db_support::run(async {
        let cfg = db_support::fresh_db().await;
        let c = Connection::connect(&cfg).await.unwrap();
        migrate::migrate(&c).await.unwrap();
        cfg
    });
    let mut eps = Mesh::new(2, 64);
    let ep1 = eps.pop().unwrap();
    let ep0 = eps.pop().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let peer = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || {
            db_support::run(async move {
                let ep1 = Rc::new(ep1);
                let _rooms = open_rooms(cfg, 1, 2, ep1.clone()).await;
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Acquire) {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
                ep1.close();
            })
        })
    };
    ready_rx.recv().unwrap();
    db_support::run(async {
        let ep0 = Rc::new(ep0);
        let rooms = open_rooms(cfg.clone(), 0, 2, ep0.clone()).await;
        body(cfg, ep0.clone(), rooms).await;
        stop.store(true, Ordering::Release);
        ep0.close();
    });
    peer.join().unwrap();
}

fn user(s: &str) -> OwnedUserId {
    OwnedUserId::try_from(s).unwrap()
}

fn text(body: &str) -> CanonicalJsonObject {
    let mut c = CanonicalJsonObject::new();
    c.insert("msgtype".into(), "m.text".to_owned().into());
    c.insert("body".into(), body.to_owned().into());
    c
}

fn msg(room: &OwnedRoomId, sender: &OwnedUserId, body: &str) -> EventRequest {
    EventRequest {
        room_id: room.clone(),
        sender: sender.clone(),
        event_type: "m.room.message".into(),
        state_key: None,
        content: text(body),
        txn: None,
        redacts: None,
    }
}

fn topic(room: &OwnedRoomId, sender: &OwnedUserId, t: &str) -> EventRequest {
    let mut c = CanonicalJsonObject::new();
    c.insert("topic".into(), t.to_owned().into());
    EventRequest {
        room_id: room.clone(),
        sender: sender.clone(),
        event_type: "m.room.topic".into(),
        state_key: Some(String::new()),
        content: c,
        txn: None,
        redacts: None,
    }
}

async fn count(pool: &Pool, sql: &str) -> i64 {
    pool.query_one(sql, &[]).await.unwrap().get(0).unwrap()
}

#[test]
fn state_storage_grows_with_changes_only_and_reconstructs_old_state() {
    with_shards(|_cfg, mesh, rooms| async move {
        let alice = user("@alice:localhost");
        let room = create_room(&mesh, alice.clone(), CreateRoomRequest::default())
            .await
            .unwrap();
        let db = rooms.db.clone();
        let snaps = count(&db, "SELECT count(*) FROM state_snapshots").await;
        let events = count(&db, "SELECT count(*) FROM events").await;
        for i in 0..500 {
            send_event(&mesh, msg(&room, &alice, &format!("m{i}")))
                .await
                .unwrap();
        }
        assert_eq!(
            count(&db, "SELECT count(*) FROM state_snapshots").await,
            snaps
        );
        assert_eq!(
            count(&db, "SELECT count(*) FROM events").await,
            events + 500
        );

        // 120 topic changes: each adds one snapshot with a one-entry delta,
        // except every MAX_CHAIN-th which is full.
        let mut history = Vec::new();
        for i in 0..120 {
            let id = send_event(&mesh, topic(&room, &alice, &format!("t{i}")))
                .await
                .unwrap();
            let full = client::get_state(&mesh, alice.clone(), room.clone())
                .await
                .unwrap();
            history.push((id, full));
        }
        assert_eq!(
            count(&db, "SELECT count(*) FROM state_snapshots").await,
            snaps + 120
        );
        let max_chain = count(&db, "SELECT max(chain_len)::int8 FROM state_snapshots").await;
        assert!(max_chain < state::MAX_CHAIN as i64, "chain {max_chain}");
        let entries = count(&db, "SELECT count(*) FROM state_snapshot_entries").await;
        assert!(
            entries < 120 * 3,
            "entries {entries} should be ~deltas, not full copies"
        );

        // The state after each old event, reconstructed from the database,
        // equals what the room's state was at the time.
        for (id, at_the_time) in history.iter().step_by(7) {
            let got = state::state_after_event(&db, id.as_str())
                .await
                .unwrap()
                .unwrap();
            let mut want: Vec<String> = at_the_time
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect();
            let mut got: Vec<String> = got.into_values().collect();
            want.sort();
            got.sort();
            assert_eq!(got, want);
        }
        // A message's snapshot is the one of the state before it.
        let m = send_event(&mesh, msg(&room, &alice, "after"))
            .await
            .unwrap();
        let last_topic = &history.last().unwrap().0;
        assert_eq!(
            state::state_after_event(&db, m.as_str()).await.unwrap(),
            state::state_after_event(&db, last_topic.as_str())
                .await
                .unwrap()
        );
    });
}

#[test]
fn rooms_are_written_on_their_owner_shard() {
    with_shards(|_cfg, mesh, rooms| async move {
        let alice = user("@alice:localhost");
        let mut owners = [0usize; 2];
        // Room ids are hashes (v12), so 8 rooms all land on one shard about
        // once in 128 runs: keep creating (bounded) until both own one.
        for i in 0..64 {
            if i >= 8 && owners[0] > 0 && owners[1] > 0 {
                break;
            }
            let room = create_room(&mesh, alice.clone(), CreateRoomRequest::default())
                .await
                .unwrap();
            let owner = shard_for_room(&room, 2);
            owners[owner] += 1;
            let id = send_event(&mesh, msg(&room, &alice, &format!("hi {i}")))
                .await
                .unwrap();
            let row = rooms
                .db
                .query_one(
                    "SELECT stream_shard, room_id, json::text FROM events WHERE event_id = $1",
                    &[&id.as_str()],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<i32>(0).unwrap() as usize, owner);
            assert_eq!(row.get::<String>(1).unwrap(), room.as_str());
            let ev: serde_json::Value =
                serde_json::from_str(&row.get::<String>(2).unwrap()).unwrap();
            assert_eq!(ev["content"]["body"], format!("hi {i}"));
            assert_eq!(ev["sender"], "@alice:localhost");
        }
        assert!(
            owners[0] > 0 && owners[1] > 0,
            "both shards own rooms: {owners:?}"
        );
        // Per-shard stream positions are unique and increasing per shard.
        let dup = count(
            &rooms.db,
            "SELECT count(*) FROM (SELECT stream_shard, stream_ordering FROM events \
             GROUP BY 1, 2 HAVING count(*) > 1) d",
        )
        .await;
        assert_eq!(dup, 0);
    });
}

#[test]
fn auth_rules_reject_non_members_and_uninvited_joins() {
    with_shards(|_cfg, mesh, _rooms| async move {
        let alice = user("@alice:localhost");
        let bob = user("@bob:localhost");
        let private = create_room(&mesh, alice.clone(), CreateRoomRequest::default())
            .await
            .unwrap();
        let err = send_event(&mesh, msg(&private, &bob, "let me in"))
            .await
            .unwrap_err();
        assert!(matches!(err, RoomError::Forbidden(_)), "{err:?}");
        let err = set_membership(
            &mesh,
            private.clone(),
            bob.clone(),
            bob.as_str(),
            "join",
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RoomError::Forbidden(_)), "{err:?}");
        assert!(matches!(
            client::get_state(&mesh, bob.clone(), private.clone()).await,
            Err(RoomError::Forbidden(_))
        ));
        // Invited, bob may join and talk.
        set_membership(
            &mesh,
            private.clone(),
            alice.clone(),
            bob.as_str(),
            "invite",
            None,
        )
        .await
        .unwrap();
        set_membership(
            &mesh,
            private.clone(),
            bob.clone(),
            bob.as_str(),
            "join",
            None,
        )
        .await
        .unwrap();
        send_event(&mesh, msg(&private, &bob, "hello"))
            .await
            .unwrap();
        // A public room needs no invite; bob cannot change its power levels.
        let public = create_room(
            &mesh,
            alice.clone(),
            CreateRoomRequest {
                preset: Some("public_chat".into()),
                name: Some("Lobby".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        set_membership(
            &mesh,
            public.clone(),
            bob.clone(),
            bob.as_str(),
            "join",
            None,
        )
        .await
        .unwrap();
        let name = client::get_state_event(
            &mesh,
            bob.clone(),
            public.clone(),
            "m.room.name".into(),
            String::new(),
        )
        .await
        .unwrap();
        assert_eq!(name["name"], "Lobby");
        let err = send_event(&mesh, topic(&public, &bob, "mine now"))
            .await
            .unwrap_err();
        assert!(matches!(err, RoomError::Forbidden(_)), "{err:?}");
        let mut joined = client::joined_rooms(&_rooms.db, bob.as_str())
            .await
            .unwrap();
        joined.sort();
        let mut want = vec![private.to_string(), public.to_string()];
        want.sort();
        assert_eq!(joined, want);
        set_membership(
            &mesh,
            public.clone(),
            bob.clone(),
            bob.as_str(),
            "leave",
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            client::joined_rooms(&_rooms.db, bob.as_str())
                .await
                .unwrap(),
            vec![private.to_string()]
        );
        // Unknown room.
        let nowhere = OwnedRoomId::try_from("!nowhere:localhost").unwrap();
        let err = send_event(&mesh, msg(&nowhere, &alice, "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, RoomError::NotFound(_)), "{err:?}");
    });
}

#[test]
fn txn_ids_are_idempotent_across_restarts_and_oversize_is_refused() {
    with_shards(|cfg, mesh, _rooms| async move {
        let alice = user("@alice:localhost");
        let room = create_room(&mesh, alice.clone(), CreateRoomRequest::default())
            .await
            .unwrap();
        let with_txn = |txn: &str| EventRequest {
            txn: Some(("DEV".into(), txn.into())),
            ..msg(&room, &alice, "once")
        };
        let a = send_event(&mesh, with_txn("t1")).await.unwrap();
        let b = send_event(&mesh, with_txn("t1")).await.unwrap();
        assert_eq!(a, b);
        let c = send_event(&mesh, with_txn("t2")).await.unwrap();
        assert_ne!(a, c);

        // A fresh service (cold caches, as after a restart) on the owner
        // shard sees the txn, the room, and resumes the stream position.
        let owner = shard_for_room(&room, 2);
        let (room2, alice2, cfg2) = (room.clone(), alice.clone(), cfg.clone());
        let again = mesh
            .submit_to(owner, move || async move {
                // Same stream writer (its resume is covered by tests/api_rooms).
                let stream = rooms::local().unwrap().stream();
                let pool = Pool::connect(cfg2, PoolConfig::default()).await.unwrap();
                let writer = GroupCommit::new(pool.clone(), GroupCommitConfig::default());
                let fresh = Rc::new(
                    Rooms::open(owner, 2, pool, writer, key(), stream)
                        .await
                        .unwrap(),
                );
                let id = fresh
                    .send(EventRequest {
                        txn: Some(("DEV".into(), "t1".into())),
                        ..msg(&room2, &alice2, "once")
                    })
                    .await
                    .map(|p| p.event_id.clone());
                let next = fresh
                    .send(msg(&room2, &alice2, "later"))
                    .await
                    .map(|p| p.depth);
                (
                    id.map_err(|e| e.to_string()),
                    next.map_err(|e| e.to_string()),
                )
            })
            .await
            .unwrap();
        assert_eq!(again.0.unwrap(), a);
        assert!(again.1.unwrap() > 3);

        let mut big = CanonicalJsonObject::new();
        big.insert("body".into(), "x".repeat(70_000).into());
        let err = send_event(
            &mesh,
            EventRequest {
                content: big,
                ..msg(&room, &alice, "")
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RoomError::TooLarge(_)), "{err:?}");
    });
}

/// A PDU of `room` signed by the fake remote server `remote.test`, with
/// auth events picked from `state` (client-format current state).
#[allow(clippy::too_many_arguments)]
fn remote_pdu(
    key: &ServerKey,
    room: &OwnedRoomId,
    state: &[serde_json::Value],
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: serde_json::Value,
    prev: &[String],
) -> (String, CanonicalJsonObject) {
    let find = |t: &str, k: &str| {
        state
            .iter()
            .find(|e| e["type"] == t && e["state_key"] == k)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
    };
    let mut auth: Vec<String> = Vec::new();
    auth.extend(find("m.room.power_levels", ""));
    auth.extend(find("m.room.member", sender));
    if kind == "m.room.member" {
        auth.extend(find("m.room.join_rules", ""));
    }
    let serde_json::Value::Object(c) = content else {
        panic!()
    };
    let signed = hearth::events::build_pdu(
        hearth::events::NewEvent {
            room_version: hearth::events::RoomVersion::V12,
            room_id: Some(room.clone()),
            sender: sender.try_into().unwrap(),
            event_type: kind.into(),
            state_key: state_key.map(Into::into),
            content: ruma::canonical_json::try_from_json_map(c).unwrap(),
            prev_events: prev
                .iter()
                .map(|p| p.as_str().try_into().unwrap())
                .collect(),
            auth_events: auth
                .iter()
                .map(|a| a.as_str().try_into().unwrap())
                .collect(),
            depth: 7,
            origin_server_ts: 1,
            redacts: None,
        },
        key,
    )
    .unwrap();
    (signed.event_id.to_string(), signed.pdu)
}

async fn extremities(db: &Pool, room: &OwnedRoomId) -> Vec<String> {
    let rows = db
        .query(
            "SELECT unnest(event_ids) AS e FROM room_extremities WHERE room_id = $1 ORDER BY e",
            &[&room.as_str()],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0).unwrap()).collect()
}

/// Through the entry point with the remote key store filled directly (the
/// seam federation will fill by fetching keys): a remote event on an old
/// extremity forks the room; the next local event names both tips and
/// closes it (depth = max + 1). An outlier is upgraded when it comes again
/// as a timeline event. Malformed PDUs are dropped before the signature
/// check.
#[test]
fn a_fork_closes_with_the_next_local_event() {
    use hearth::rooms::receive::{Applied, Received};
    with_shards(|_cfg, mesh, rooms| async move {
        let db = rooms.db.clone();
        let alice = user("@alice:localhost");
        let bob = "@bob:remote.test";
        let remote =
            ServerKey::from_seed("remote.test".try_into().unwrap(), "1", &[9; 32]).unwrap();
        client::add_remote_key(
            &mesh,
            "remote.test".into(),
            remote.key_id.to_string(),
            remote.public_key_base64(),
        )
        .await
        .unwrap();
        let req = CreateRoomRequest {
            preset: Some("public_chat".into()),
            ..CreateRoomRequest::default()
        };
        let room = create_room(&mesh, alice.clone(), req).await.unwrap();
        let apply = |pdu: CanonicalJsonObject, outlier: bool| {
            let (mesh, room) = (mesh.clone(), room.clone());
            async move {
                client::apply_pdu(
                    &mesh,
                    Received {
                        outlier,
                        ..Received::new(room, pdu)
                    },
                )
                .await
            }
        };
        let st = client::get_state(&mesh, alice.clone(), room.clone())
            .await
            .unwrap();
        let tip = extremities(&db, &room).await;
        assert_eq!(tip.len(), 1);
        let (join_id, join) = remote_pdu(
            &remote,
            &room,
            &st,
            bob,
            "m.room.member",
            Some(bob),
            serde_json::json!({"membership": "join"}),
            &tip,
        );
        assert_eq!(
            apply(join, false).await.unwrap(),
            Applied::Accepted(join_id.as_str().try_into().unwrap())
        );
        assert_eq!(extremities(&db, &room).await, vec![join_id.clone()]);

        // Fork: alice's message and bob's, both on bob's join.
        let st = client::get_state(&mesh, alice.clone(), room.clone())
            .await
            .unwrap();
        let m = send_event(&mesh, msg(&room, &alice, "mine")).await.unwrap();
        let (r_id, r) = remote_pdu(
            &remote,
            &room,
            &st,
            bob,
            "m.room.message",
            None,
            serde_json::json!({"msgtype": "m.text", "body": "theirs"}),
            std::slice::from_ref(&join_id),
        );
        assert!(matches!(
            apply(r, false).await.unwrap(),
            Applied::Accepted(_)
        ));
        let mut both = vec![m.to_string(), r_id.clone()];
        both.sort();
        assert_eq!(extremities(&db, &room).await, both);
        // The next local event closes it.
        let n = send_event(&mesh, msg(&room, &alice, "closing"))
            .await
            .unwrap();
        assert_eq!(extremities(&db, &room).await, vec![n.to_string()]);
        let row = db
            .query_one(
                "SELECT json->'prev_events', depth, \
                 (SELECT depth FROM events WHERE event_id = $2) FROM events WHERE event_id = $1",
                &[&n.as_str(), &m.as_str()],
            )
            .await
            .unwrap();
        let mut prevs: Vec<String> = serde_json::from_value(row.get(0).unwrap()).unwrap();
        prevs.sort();
        assert_eq!(prevs, both);
        assert_eq!(row.get::<i64>(1).unwrap(), row.get::<i64>(2).unwrap() + 1);

        // An outlier, then the same event with its prev events known.
        let st = client::get_state(&mesh, alice.clone(), room.clone())
            .await
            .unwrap();
        let (o_id, o) = remote_pdu(
            &remote,
            &room,
            &st,
            bob,
            "m.room.message",
            None,
            serde_json::json!({"msgtype": "m.text", "body": "outlier first"}),
            &[n.to_string()],
        );
        assert!(matches!(
            apply(o.clone(), true).await.unwrap(),
            Applied::Outlier { .. }
        ));
        let in_events = format!("SELECT count(*) FROM events WHERE event_id = '{o_id}'");
        let outliers = format!(
            "SELECT count(*) FROM graph_events WHERE event_id = '{o_id}' AND status = 'outlier'"
        );
        assert_eq!(
            (count(&db, &in_events).await, count(&db, &outliers).await),
            (0, 1)
        );
        assert!(matches!(
            apply(o, false).await.unwrap(),
            Applied::Accepted(_)
        ));
        assert_eq!(
            (count(&db, &in_events).await, count(&db, &outliers).await),
            (1, 0)
        );
        assert_eq!(extremities(&db, &room).await, vec![o_id]);

        // A content hash mismatch (content changed after signing; the
        // signature covers the redacted form): kept, redacted.
        let st = client::get_state(&mesh, alice.clone(), room.clone())
            .await
            .unwrap();
        let tip = extremities(&db, &room).await;
        let (t_id, mut tampered) = remote_pdu(
            &remote,
            &room,
            &st,
            bob,
            "m.room.message",
            None,
            serde_json::json!({"msgtype": "m.text", "body": "original"}),
            &tip,
        );
        let mut content = CanonicalJsonObject::new();
        content.insert("body".into(), "changed in transit".to_owned().into());
        tampered.insert("content".into(), ruma::CanonicalJsonValue::Object(content));
        assert!(matches!(
            apply(tampered, false).await.unwrap(),
            Applied::Accepted(_)
        ));
        let stored: serde_json::Value = db
            .query_one(
                "SELECT json FROM events WHERE event_id = $1",
                &[&t_id.as_str()],
            )
            .await
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(stored["content"], serde_json::json!({}));

        // Sanity limits: 21 prev_events is dropped (format before signatures).
        let (_, mut big) = remote_pdu(
            &remote,
            &room,
            &st,
            bob,
            "m.room.message",
            None,
            serde_json::json!({"msgtype": "m.text", "body": "wide"}),
            &[n.to_string()],
        );
        let many: Vec<ruma::CanonicalJsonValue> = (0..21)
            .map(|i| ruma::CanonicalJsonValue::String(format!("$e{i:043}")))
            .collect();
        big.insert("prev_events".into(), ruma::CanonicalJsonValue::Array(many));
        assert!(matches!(
            apply(big, false).await,
            Err(RoomError::BadJson(_))
        ));
    });
}

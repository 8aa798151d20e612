//! A room's write pipeline (`rooms::pipeline`) on real PostgreSQL: sends to
//! one room share commits, keep the graph a chain in order, keep txn ids
//! idempotent while committing, and a failed write never leaves an event
//! committed without the events it references.

mod db_support;

use std::rc::Rc;
use std::sync::Arc;

use futures_util::future::join_all;
use hearth::db::{
    migrate, ConnectConfig, Connection, GroupCommit, GroupCommitConfig, Pool, PoolConfig,
};
use hearth::events::ServerKey;
use hearth::mesh::{Mesh, MeshEndpoint};
use hearth::rooms::client::create_room;
use hearth::rooms::create::CreateRoomRequest;
use hearth::rooms::{self, EventRequest, Rooms};
use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId};

fn key() -> Arc<ServerKey> {
    let name = OwnedServerName::try_from("localhost").unwrap();
    Arc::new(ServerKey::from_seed(name, "test", &[7; 32]).unwrap())
}

struct One {
    cfg: ConnectConfig,
    mesh: Rc<MeshEndpoint>,
    rooms: Rc<Rooms>,
    writer: GroupCommit,
    pool: Pool,
}

/// One shard (it owns every room) over a fresh migrated database.
fn with_shard<F, Fut>(body: F)
where
    F: FnOnce(One) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    db_support::run(async {
        let cfg = db_support::fresh_db().await;
        let c = Connection::connect(&cfg).await.unwrap();
        migrate::migrate(&c).await.unwrap();
        let mesh = Rc::new(Mesh::new(1, 64).pop().unwrap());
        let pool = Pool::connect(cfg.clone(), PoolConfig::default())
            .await
            .unwrap();
        let writer = GroupCommit::new(pool.clone(), GroupCommitConfig::default());
        let (stream, _notifier) = hearth::stream::open(&pool, 0, 1).await.unwrap();
        let rooms = Rc::new(
            Rooms::open(0, 1, pool.clone(), writer.clone(), key(), stream.clone())
                .await
                .unwrap(),
        );
        rooms::install(rooms.clone());
        mesh.spawn_receiver();
        monoio::spawn(stream.run_announcer(mesh.clone()));
        body(One {
            cfg,
            mesh: mesh.clone(),
            rooms,
            writer,
            pool,
        })
        .await;
        mesh.close();
    });
}

fn msg(room: &OwnedRoomId, sender: &OwnedUserId, body: &str) -> EventRequest {
    let mut c = CanonicalJsonObject::new();
    c.insert("msgtype".into(), "m.text".to_owned().into());
    c.insert("body".into(), body.to_owned().into());
    EventRequest {
        room_id: room.clone(),
        sender: sender.clone(),
        event_type: "m.room.message".into(),
        state_key: None,
        content: c,
        txn: None,
        redacts: None,
    }
}

fn alice() -> OwnedUserId {
    OwnedUserId::try_from("@alice:localhost").unwrap()
}

/// The room's timeline in stream order: (event id, depth, prev_events).
async fn chain(pool: &Pool, room: &OwnedRoomId) -> Vec<(String, i64, Vec<String>)> {
    let rows = pool
        .query(
            "SELECT event_id, depth, json->'prev_events' FROM events WHERE room_id = $1 \
             ORDER BY stream_ordering",
            &[&room.as_str()],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let prev: serde_json::Value = r.get(2).unwrap();
            let prev = prev
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            (r.get(0).unwrap(), r.get(1).unwrap(), prev)
        })
        .collect()
}

/// Every event's prev events are in the room, and the one forward
/// extremity is the last event.
async fn assert_linear(pool: &Pool, room: &OwnedRoomId) -> usize {
    let events = chain(pool, room).await;
    for w in events.windows(2) {
        assert_eq!(
            w[1].2,
            vec![w[0].0.clone()],
            "each event follows the one before"
        );
        assert_eq!(w[1].1, w[0].1 + 1, "depth grows by one");
    }
    let ext = pool
        .query(
            "SELECT unnest(event_ids) FROM room_extremities WHERE room_id = $1",
            &[&room.as_str()],
        )
        .await
        .unwrap();
    let ext: Vec<String> = ext.iter().map(|r| r.get(0).unwrap()).collect();
    assert_eq!(ext, vec![events.last().unwrap().0.clone()]);
    events.len()
}

#[test]
fn concurrent_sends_to_one_room_share_commits_in_order() {
    with_shard(|one| async move {
        let room = create_room(&one.mesh, alice(), CreateRoomRequest::default())
            .await
            .unwrap();
        let before = one.writer.stats().writes;
        let sends = (0..60).map(|i| one.rooms.send(msg(&room, &alice(), &format!("m{i}"))));
        let results = join_all(sends).await;
        let ids: Vec<String> = results
            .into_iter()
            .map(|r| r.unwrap().event_id.to_string())
            .collect();
        let writes = one.writer.stats().writes - before;
        assert!(
            writes < 30,
            "60 sends to one room took {writes} writes: they should share commits"
        );
        let n = assert_linear(&one.pool, &room).await;
        let events = chain(&one.pool, &room).await;
        let last: Vec<String> = events[n - 60..].iter().map(|e| e.0.clone()).collect();
        assert_eq!(last, ids, "answered in the order built and stored");

        // A cold service (as after a restart) builds on the last of them.
        let stream = one.rooms.stream();
        let pool = Pool::connect(one.cfg.clone(), PoolConfig::default())
            .await
            .unwrap();
        let writer = GroupCommit::new(pool.clone(), GroupCommitConfig::default());
        let fresh = Rc::new(
            Rooms::open(0, 1, pool, writer, key(), stream)
                .await
                .unwrap(),
        );
        fresh.send(msg(&room, &alice(), "after")).await.unwrap();
        assert_linear(&one.pool, &room).await;
    });
}

#[test]
fn a_txn_retried_while_the_first_commits_gets_the_same_event() {
    with_shard(|one| async move {
        let room = create_room(&one.mesh, alice(), CreateRoomRequest::default())
            .await
            .unwrap();
        let with_txn = |txn: &str| EventRequest {
            txn: Some(("DEV".into(), txn.into())),
            ..msg(&room, &alice(), "once")
        };
        let sends = vec![
            one.rooms.send(msg(&room, &alice(), "first")),
            one.rooms.send(with_txn("t1")),
            one.rooms.send(with_txn("t1")),
            one.rooms.send(with_txn("t2")),
            one.rooms.send(with_txn("t1")),
        ];
        let ids: Vec<String> = join_all(sends)
            .await
            .into_iter()
            .map(|r| r.unwrap().event_id.to_string())
            .collect();
        assert_eq!(ids[1], ids[2]);
        assert_eq!(ids[1], ids[4]);
        assert_ne!(ids[1], ids[3]);
        let bodies = one
            .pool
            .query(
                "SELECT count(*) FROM events WHERE room_id = $1 AND type = 'm.room.message'",
                &[&room.as_str()],
            )
            .await
            .unwrap();
        assert_eq!(bodies[0].get::<i64>(0).unwrap(), 3);
        assert_linear(&one.pool, &room).await;
    });
}

#[test]
fn a_failed_write_fails_the_events_built_on_it_and_the_graph_stays_whole() {
    with_shard(|one| async move {
        let room = create_room(&one.mesh, alice(), CreateRoomRequest::default())
            .await
            .unwrap();
        let admin = Connection::connect(&one.cfg).await.unwrap();
        for round in 0..3 {
            let sends = (0..40).map(|i| {
                one.rooms
                    .send(msg(&room, &alice(), &format!("r{round} {i}")))
            });
            // Cut every other connection while the sends are committing.
            let kill = async {
                monoio::time::sleep(std::time::Duration::from_millis(1 + round)).await;
                admin
                    .simple_query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    )
                    .await
                    .unwrap();
            };
            let (results, ()) = futures_util::join!(join_all(sends), kill);
            let failed = results.iter().filter(|r| r.is_err()).count();
            eprintln!("round {round}: {failed} of 40 sends failed");
        }
        // Service is back: sends work and build on what is stored.
        let mut ok = false;
        for _ in 0..50 {
            if one.rooms.send(msg(&room, &alice(), "after")).await.is_ok() {
                ok = true;
                break;
            }
            monoio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(ok, "sends work again after the connections were cut");
        assert_linear(&one.pool, &room).await;
    });
}

/// A txn id the shard's memory never saw (its row written before this
/// process, as after a restart) is still found: the first send of a device
/// loads the device's txn ids (`rooms::txn::TxnMemory`).
#[test]
fn a_txn_id_from_before_the_memory_is_still_idempotent() {
    with_shard(|one| async move {
        let room = create_room(&one.mesh, alice(), CreateRoomRequest::default())
            .await
            .unwrap();
        let first = one
            .rooms
            .send(EventRequest {
                txn: Some(("DEV".into(), "t1".into())),
                ..msg(&room, &alice(), "once")
            })
            .await
            .unwrap();
        // Another device's row, as an earlier process would have left it.
        one.pool
            .execute(
                "INSERT INTO txn_ids (user_id, device_id, room_id, txn_id, event_id) \
                 VALUES ($1, 'OLD', $2, 'old1', $3)",
                &[&alice().as_str(), &room.as_str(), &first.event_id.as_str()],
            )
            .await
            .unwrap();
        let send = |dev: &str, txn: &str| {
            one.rooms.send(EventRequest {
                txn: Some((dev.into(), txn.into())),
                ..msg(&room, &alice(), "again")
            })
        };
        assert_eq!(send("OLD", "old1").await.unwrap().event_id, first.event_id);
        assert_eq!(send("DEV", "t1").await.unwrap().event_id, first.event_id);
        // New ids of a loaded device get new events, and are then known.
        let t2 = send("OLD", "t2").await.unwrap().event_id.clone();
        assert_ne!(t2, first.event_id);
        assert_eq!(send("OLD", "t2").await.unwrap().event_id, t2);
    });
}

/// The memory's answers: "no" only for a txn id it holds every id of the
/// device for; over its limits it says "maybe" (the database decides).
#[test]
fn txn_memory_says_no_only_when_complete() {
    use hearth::rooms::txn::{Seen, TxnMemory};
    with_shard(|one| async move {
        let key = |dev: &str, txn: &str| {
            (
                "@a:localhost".to_owned(),
                dev.to_owned(),
                "!r:localhost".to_owned(),
                txn.to_owned(),
            )
        };
        let mem = TxnMemory::with_limits(8, 3, 2);
        // Pending at load time counts as seen.
        let pending = || vec![("!r:localhost".to_owned(), "p".to_owned())];
        assert_eq!(
            mem.seen(&one.pool, &key("A", "p"), pending).await,
            Seen::Maybe
        );
        assert_eq!(
            mem.seen(&one.pool, &key("A", "x"), Vec::new).await,
            Seen::No
        );
        mem.note(&key("A", "x"));
        assert_eq!(
            mem.seen(&one.pool, &key("A", "x"), Vec::new).await,
            Seen::Maybe
        );
        assert_eq!(mem.held(), 2);
        // A third id is past the device's limit: always "maybe" now.
        mem.note(&key("A", "y"));
        assert_eq!(mem.held(), 0);
        assert_eq!(
            mem.seen(&one.pool, &key("A", "z"), Vec::new).await,
            Seen::Maybe
        );
        // Over the shard's budget the least recently used device goes,
        // and is loaded again when next asked.
        assert_eq!(
            mem.seen(&one.pool, &key("B", "1"), Vec::new).await,
            Seen::No
        );
        mem.note(&key("B", "1"));
        mem.note(&key("B", "2"));
        assert_eq!(
            mem.seen(&one.pool, &key("C", "1"), Vec::new).await,
            Seen::No
        );
        mem.note(&key("C", "1"));
        mem.note(&key("C", "2"));
        assert!(mem.held() <= 3, "held {}", mem.held());
    });
}

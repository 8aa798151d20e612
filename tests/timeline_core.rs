//! The timeline readers `/sync` builds on, in-process on real PostgreSQL
//! (one shard): `recent_events` between sync tokens, sync-token
//! resolution, and serving with `unsigned`.

mod db_support;

use std::rc::Rc;
use std::sync::Arc;

use hearth::db::{migrate, Connection, GroupCommit, GroupCommitConfig, Pool, PoolConfig};
use hearth::events::ServerKey;
use hearth::mesh::Mesh;
use hearth::rooms::client::{create_room, send_event};
use hearth::rooms::create::CreateRoomRequest;
use hearth::rooms::timeline::{self, RoomToken};
use hearth::rooms::{self, serve, EventRequest, Rooms};
use hearth::stream::{ShardPos, StreamToken};
use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedServerName, OwnedUserId};

fn token(stream: i64) -> StreamToken {
    StreamToken::from_positions(vec![ShardPos {
        persisted: stream,
        ephemeral: 0,
    }])
}

#[test]
fn recent_events_between_sync_tokens() {
    db_support::run(async {
        let cfg = db_support::fresh_db().await;
        let c = Connection::connect(&cfg).await.unwrap();
        migrate::migrate(&c).await.unwrap();
        let mut eps = Mesh::new(1, 64);
        let mesh = Rc::new(eps.pop().unwrap());
        mesh.spawn_receiver();
        let pool = Pool::connect(cfg, PoolConfig::default()).await.unwrap();
        let writer = GroupCommit::new(pool.clone(), GroupCommitConfig::default());
        let name = OwnedServerName::try_from("localhost").unwrap();
        let key = Arc::new(ServerKey::from_seed(name, "test", &[7; 32]).unwrap());
        let (stream, _notifier) = hearth::stream::open(&pool, 0, 1).await.unwrap();
        let rooms = Rc::new(
            Rooms::open(0, 1, pool.clone(), writer, key, stream.clone())
                .await
                .unwrap(),
        );
        rooms::install(rooms.clone());
        monoio::spawn(stream.run_announcer(mesh.clone()));

        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let room = create_room(&mesh, alice.clone(), CreateRoomRequest::default())
            .await
            .unwrap();
        let mut sent = Vec::new();
        for i in 0..10 {
            let mut c = CanonicalJsonObject::new();
            c.insert("body".into(), format!("m{i}").into());
            let req = EventRequest {
                room_id: room.clone(),
                sender: alice.clone(),
                event_type: "m.room.message".into(),
                state_key: None,
                content: c,
                txn: Some(("DEV".into(), format!("t{i}"))),
                redacts: None,
            };
            sent.push(send_event(&mesh, req).await.unwrap().to_string());
        }
        let evs = timeline::load_ordered(&pool, &sent).await.unwrap();
        let streams: Vec<i64> = evs.iter().map(|e| e.pos.stream).collect();
        let now = token(streams[9]);

        // Initial sync: the newest 4, oldest first, limited.
        let (got, limited) = timeline::recent_events(&pool, room.as_str(), None, &now, 1, 4)
            .await
            .unwrap();
        let ids: Vec<String> = got.iter().map(|e| e.pdu.event_id.to_string()).collect();
        assert_eq!(ids, sent[6..].to_vec());
        assert!(limited);
        // prev_batch as a room token continues exactly before them.
        let prev = RoomToken(got[0].pos.predecessor());
        let page = timeline::page(
            &pool,
            room.as_str(),
            timeline::Dir::Back,
            prev.0,
            timeline::RoomPos::START,
            &Default::default(),
            2,
        )
        .await
        .unwrap();
        assert_eq!(page[0].pdu.event_id.to_string(), sent[5]);

        // Incremental: strictly after `since`, at/before `upto`.
        let (got, limited) = timeline::recent_events(
            &pool,
            room.as_str(),
            Some(&token(streams[6])),
            &token(streams[8]),
            1,
            10,
        )
        .await
        .unwrap();
        let ids: Vec<String> = got.iter().map(|e| e.pdu.event_id.to_string()).collect();
        assert_eq!(ids, sent[7..9].to_vec());
        assert!(!limited);

        // A sync token resolves to the latest event it covers.
        let pos = timeline::resolve_stream_token(&pool, room.as_str(), &token(streams[3]), 1)
            .await
            .unwrap();
        assert_eq!(pos, evs[3].pos);

        // Serving: unsigned.age, transaction_id for the sending device only.
        let dev = serve::Viewer {
            user_id: alice.to_string(),
            device_id: Some("DEV".into()),
        };
        let served = serve::client_events(&pool, &evs[..2], Some(&dev))
            .await
            .unwrap();
        assert_eq!(served[1]["unsigned"]["transaction_id"], "t1");
        assert!(served[0]["unsigned"]["age"].is_u64());
        let other = serve::Viewer {
            device_id: Some("OTHER".into()),
            ..dev
        };
        let served = serve::client_events(&pool, &evs[..1], Some(&other))
            .await
            .unwrap();
        assert!(served[0]["unsigned"].get("transaction_id").is_none());
        mesh.close();
    });
}

//! Interop with a real Synapse (PyPI, `common::synapse`): a hearth user
//! joins a Synapse room with a few members through a partial-state join
//! (hearth asks `omit_members=true`, Synapse answers `members_omitted`),
//! messages flow both ways while and after hearth resyncs, and the full
//! member list appears on hearth once the resync is done.

mod common;

use std::time::{Duration, Instant};

use common::fed::start_home_with;
use common::synapse::{start_synapse, syn_call, syn_register, synapse_python, Synapse};
use common::{call, enc, ok, register_user};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

#[track_caller]
fn within(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs} s waiting for: {what}");
}

fn syn_bodies(syn: &Synapse, token: &str, room: &str) -> Vec<String> {
    let (status, v) = syn_call(
        syn,
        "GET",
        &format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            enc(room)
        ),
        Some(token),
        None,
    );
    if status != 200 {
        return Vec::new();
    }
    v["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ok_syn(syn: &Synapse, method: &str, path: &str, token: &str, body: Value) -> Value {
    let (status, v) = syn_call(syn, method, path, Some(token), Some(&body));
    assert_eq!(status, 200, "Synapse {method} {path}: {v}");
    v
}

#[test]
fn a_hearth_user_joins_a_synapse_room_with_partial_state_and_resyncs() {
    let py = synapse_python();
    let syn = start_synapse(&py);
    let home = start_home_with(&[
        ("HEARTH_FEDERATION__RETRY_MIN_MS", "500"),
        ("HEARTH_FEDERATION__RETRY_MAX_MS", "2000"),
    ]);
    let db = home
        .opts
        .env
        .iter()
        .find(|(k, _)| k == "HEARTH_DATABASE__URL")
        .map(|(_, v)| v.rsplit('/').next().unwrap().to_owned())
        .unwrap();
    let psql = |sql: &str| TestCluster::shared().psql(&db, sql).expect("psql");
    let (sam, sam_t) = syn_register(&syn, "sam");
    let room = ok_syn(
        &syn,
        "POST",
        "/_matrix/client/v3/createRoom",
        &sam_t,
        json!({"preset": "public_chat"}),
    )["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut syn_members = vec![sam.clone()];
    for name in ["tom", "uma", "vic", "wes"] {
        let (id, t) = syn_register(&syn, name);
        ok_syn(
            &syn,
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            &t,
            json!({}),
        );
        syn_members.push(id);
    }
    let send = |t: &str, body: &str| {
        ok_syn(
            &syn,
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(&room),
                enc(body)
            ),
            t,
            json!({"msgtype": "m.text", "body": body}),
        )
    };
    send(&sam_t, "before bob");

    let bob = register_user(&home.h, "bob");
    let t0 = Instant::now();
    let r = call(
        &home.h,
        "POST",
        &format!("/join/{}?server_name={}", enc(&room), enc(&syn.name)),
        &bob.token,
        Some(json!({})),
    );
    assert_eq!(r.status, 200, "bob's remote join: {:?}", r.json());
    let joined = t0.elapsed();
    // Recorded partial at once (the resync may already have finished: the
    // resynced row says it was partial).
    let was_partial = psql(&format!(
        "SELECT (SELECT count(*) FROM partial_state_rooms WHERE room_id = '{room}') + \
         (SELECT count(*) FROM partial_state_resynced WHERE room_id = '{room}')"
    ));
    assert_eq!(was_partial, "1", "Synapse answered a partial-state join");
    let sent = ok(call(
        &home.h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/hi"),
        &bob.token,
        Some(json!({"msgtype": "m.text", "body": "hi from bob"})),
    ));
    assert!(sent["event_id"].is_string());
    let can_send = t0.elapsed();
    within(60, "bob's message on Synapse", || {
        syn_bodies(&syn, &sam_t, &room).contains(&"hi from bob".to_owned())
    });
    send(&sam_t, "welcome, bob");
    within(60, "sam's message on hearth", || {
        let r = call(
            &home.h,
            "GET",
            &format!("/rooms/{room}/messages?dir=b&limit=50"),
            &bob.token,
            None,
        );
        r.json()["chunk"]
            .as_array()
            .is_some_and(|c| c.iter().any(|e| e["content"]["body"] == "welcome, bob"))
    });
    // The full member list once the resync is done (/members waits for it).
    within(90, "the resync to complete", || {
        psql(&format!(
            "SELECT count(*) FROM partial_state_rooms WHERE room_id = '{room}'"
        )) == "0"
    });
    let full = t0.elapsed();
    let members = ok(call(
        &home.h,
        "GET",
        &format!("/rooms/{room}/members?membership=join"),
        &bob.token,
        None,
    ));
    let ids: Vec<&str> = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    for m in syn_members.iter().chain([&bob.id]) {
        assert!(ids.contains(&m.as_str()), "{m} missing from {ids:?}");
    }
    println!(
        "Synapse partial join: /join answered after {joined:?}, could send after {can_send:?}, \
         full state after {full:?}"
    );
    // After the resync, still both ways.
    send(&sam_t, "after the resync");
    within(60, "the later message on hearth", || {
        let r = call(
            &home.h,
            "GET",
            &format!("/rooms/{room}/messages?dir=b&limit=50"),
            &bob.token,
            None,
        );
        r.json()["chunk"]
            .as_array()
            .is_some_and(|c| c.iter().any(|e| e["content"]["body"] == "after the resync"))
    });
}

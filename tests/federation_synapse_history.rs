//! Interop with a real Synapse (PyPI, `common::synapse`): history from
//! before our join (server-server "Backfilling and retrieving missing
//! events"). A Synapse user creates a public room and sends 30 messages;
//! a hearth user joins by id through Synapse; paging `/messages dir=b`
//! from the hearth user's sync token backfills the messages from Synapse
//! and returns them in order, each once.

mod common;

use common::fed::start_home;
use common::synapse::{start_synapse, syn_call, syn_register, synapse_python};
use common::{call, enc, ok, register_user};
use serde_json::json;

#[test]
fn a_hearth_user_reads_a_synapse_rooms_history_from_before_its_join() {
    let py = synapse_python();
    let syn = start_synapse(&py);
    let home = start_home();
    let (_bob, bob_t) = syn_register(&syn, "bob");
    let (status, v) = syn_call(
        &syn,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&bob_t),
        Some(&json!({"preset": "public_chat", "name": "History"})),
    );
    assert_eq!(status, 200, "createRoom on Synapse: {v}");
    let room = v["room_id"].as_str().unwrap().to_owned();
    let bodies: Vec<String> = (0..30).map(|i| format!("before {i}")).collect();
    for b in &bodies {
        let (status, v) = syn_call(
            &syn,
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(&room),
                enc(b)
            ),
            Some(&bob_t),
            Some(&json!({"msgtype": "m.text", "body": b})),
        );
        assert_eq!(status, 200, "Synapse send: {v}");
    }

    let alice = register_user(&home.h, "alice");
    ok(call(
        &home.h,
        "POST",
        &format!("/join/{}?server_name={}", enc(&room), enc(&syn.name)),
        &alice.token,
        Some(json!({})),
    ));
    let s = ok(call(&home.h, "GET", "/sync?timeout=0", &alice.token, None));
    let mut from = s["next_batch"].as_str().unwrap().to_owned();

    // Page back (10 at a time) until the create event or the end.
    let mut seen: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..30 {
        let v = ok(call(
            &home.h,
            "GET",
            &format!(
                "/rooms/{}/messages?dir=b&limit=10&from={}",
                enc(&room),
                enc(&from)
            ),
            &alice.token,
            None,
        ));
        for e in v["chunk"].as_array().unwrap() {
            ids.push(e["event_id"].as_str().unwrap().to_owned());
            if let Some(b) = e["content"]["body"].as_str() {
                seen.push(b.to_owned());
            }
        }
        match v["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    let mut want = bodies.clone();
    want.reverse();
    assert_eq!(seen, want, "the pre-join messages, newest first, each once");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no event twice: {ids:?}");
}

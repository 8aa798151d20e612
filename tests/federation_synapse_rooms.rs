//! Interop with a real Synapse (PyPI, `common::synapse`) in a room hearth
//! hosts, over TLS on loopback, both ways (issue: "a real Synapse joins,
//! talks and leaves a hearth room"):
//! - Synapse users join a public hearth room by id (`server_name=`) and
//!   by alias (Synapse's partial-state join, `omit_members`);
//! - messages, typing and read receipts flow both ways;
//! - a Synapse user invited by a hearth user accepts;
//! - a Synapse user leaves;
//! - hearth is killed mid-conversation; what Synapse's user sent meanwhile
//!   reaches hearth, and what hearth's user sends after reaches Synapse.

mod common;

use std::time::{Duration, Instant};

use common::fed::{membership, start_home_with, Home};
use common::synapse::{start_synapse, syn_call, syn_register, synapse_python, Synapse};
use common::{call, enc, ok, register_user, Hearth, Registered};
use serde_json::{json, Value};

/// Polls `f` until it holds (federation is asynchronous both ways).
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

/// The bodies of the room's recent messages as `token` sees them on Synapse.
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

fn hearth_bodies(home: &Home, user: &Registered, room: &str) -> Vec<String> {
    let r = call(
        &home.h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=50"),
        &user.token,
        None,
    );
    if r.status != 200 {
        return Vec::new();
    }
    r.json()["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn syn_send(syn: &Synapse, token: &str, room: &str, body: &str) {
    let (status, v) = syn_call(
        syn,
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room),
            enc(body)
        ),
        Some(token),
        Some(&json!({"msgtype": "m.text", "body": body})),
    );
    assert_eq!(status, 200, "Synapse send: {v}");
}

fn hearth_send(home: &Home, user: &Registered, room: &str, body: &str) -> String {
    ok(call(
        &home.h,
        "PUT",
        &format!("/rooms/{room}/send/m.room.message/{}", enc(body)),
        &user.token,
        Some(json!({"msgtype": "m.text", "body": body})),
    ))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Syncs `token` on Synapse until `pred` holds for one response: an
/// initial sync, then incremental ones from each `next_batch` (Synapse
/// caches a response per since token, so repeating one would not see news).
#[track_caller]
fn syn_sync_until(
    syn: &Synapse,
    token: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) {
    let start = Instant::now();
    let mut since: Option<String> = None;
    while start.elapsed() < Duration::from_secs(secs) {
        let path = match &since {
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
            Some(s) => format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(s)),
        };
        let (status, v) = syn_call(syn, "GET", &path, Some(token), None);
        if status == 200 {
            if pred(&v) {
                return;
            }
            since = v["next_batch"].as_str().map(str::to_owned).or(since);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    panic!("timed out after {secs} s waiting for: {what}");
}

/// Whether a sync response has an ephemeral event of `kind` in `room`
/// mentioning `user`.
fn has_ephemeral(v: &Value, room: &str, kind: &str, user: &str) -> bool {
    v["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .is_some_and(|evs| {
            evs.iter()
                .any(|e| e["type"] == kind && e["content"].to_string().contains(user))
        })
}

fn hearth_ephemeral(home: &Home, user: &Registered, room: &str) -> Vec<Value> {
    let v = ok(call(&home.h, "GET", "/sync?timeout=0", &user.token, None));
    v["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn synapse_users_join_talk_are_invited_and_leave_a_hearth_room() {
    let py = synapse_python();
    let syn = start_synapse(&py);
    let mut home = start_home_with(&[
        ("HEARTH_FEDERATION__RETRY_MIN_MS", "500"),
        ("HEARTH_FEDERATION__RETRY_MAX_MS", "2000"),
    ]);
    let alice = register_user(&home.h, "alice");
    let room = ok(call(
        &home.h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (bob, bob_t) = syn_register(&syn, "bob");
    let (carol, carol_t) = syn_register(&syn, "carol");
    let (dave, dave_t) = syn_register(&syn, "dave");

    // bob joins by room id, via hearth.
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(&room),
            enc(&home.name)
        ),
        Some(&bob_t),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "bob's join: {v}");
    assert_eq!(
        membership(&home, &alice, &room, &bob).as_deref(),
        Some("join")
    );
    // carol joins by alias.
    let alias = format!("#lobby:{}", home.name);
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&alias)),
        Some(&carol_t),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "carol's join by alias: {v}");
    assert_eq!(v["room_id"], room);

    // Messages both ways.
    hearth_send(&home, &alice, &room, "hello from hearth");
    within(60, "alice's message on Synapse", || {
        syn_bodies(&syn, &bob_t, &room).contains(&"hello from hearth".to_owned())
    });
    syn_send(&syn, &bob_t, &room, "hello from synapse");
    within(60, "bob's message on hearth", || {
        hearth_bodies(&home, &alice, &room).contains(&"hello from synapse".to_owned())
    });

    // Typing both ways.
    ok(call(
        &home.h,
        "PUT",
        &format!("/rooms/{room}/typing/{}", enc(&alice.id)),
        &alice.token,
        Some(json!({"typing": true, "timeout": 30000})),
    ));
    syn_sync_until(&syn, &bob_t, 60, "alice typing on Synapse", |v| {
        has_ephemeral(v, &room, "m.typing", &alice.id)
    });
    let (status, _) = syn_call(
        &syn,
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(&room),
            enc(&bob)
        ),
        Some(&bob_t),
        Some(&json!({"typing": true, "timeout": 30000})),
    );
    assert_eq!(status, 200);
    within(60, "bob typing on hearth", || {
        hearth_ephemeral(&home, &alice, &room)
            .iter()
            .any(|e| e["type"] == "m.typing" && e["content"]["user_ids"].to_string().contains(&bob))
    });

    // Read receipts both ways.
    let last = ok(call(
        &home.h,
        "GET",
        &format!("/rooms/{room}/messages?dir=b&limit=1"),
        &alice.token,
        None,
    ))["chunk"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{room}/receipt/m.read/{}", enc(&last)),
        &alice.token,
        Some(json!({})),
    ));
    syn_sync_until(&syn, &bob_t, 60, "alice's receipt on Synapse", |v| {
        has_ephemeral(v, &room, "m.receipt", &alice.id)
    });
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&last)
        ),
        Some(&bob_t),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "{v}");
    within(60, "bob's receipt on hearth", || {
        hearth_ephemeral(&home, &alice, &room)
            .iter()
            .any(|e| e["type"] == "m.receipt" && e["content"].to_string().contains(&bob))
    });

    // alice invites dave; dave sees the invite on Synapse and accepts.
    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{room}/invite"),
        &alice.token,
        Some(json!({"user_id": dave})),
    ));
    syn_sync_until(&syn, &dave_t, 60, "dave's invite on Synapse", |v| {
        v["rooms"]["invite"][&room].is_object()
    });
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Some(&dave_t),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "dave accepts: {v}");
    within(30, "dave joined on hearth", || {
        membership(&home, &alice, &room, &dave).as_deref() == Some("join")
    });

    // carol leaves.
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&carol_t),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "carol leaves: {v}");
    within(60, "carol left on hearth", || {
        membership(&home, &alice, &room, &carol).as_deref() == Some("leave")
    });

    // hearth goes down mid-conversation and comes back.
    home.h.signal(libc::SIGKILL);
    home.h.wait_exit(Duration::from_secs(30));
    syn_send(&syn, &bob_t, &room, "sent while hearth was down");
    let dir = std::mem::replace(&mut home.h.data_dir, tempfile::tempdir().unwrap());
    home.h = Hearth::start_in(home.opts.clone(), dir);
    hearth_send(&home, &alice, &room, "back again");
    within(90, "the message sent meanwhile on hearth", || {
        hearth_bodies(&home, &alice, &room).contains(&"sent while hearth was down".to_owned())
    });
    within(60, "hearth's message after the restart on Synapse", || {
        syn_bodies(&syn, &bob_t, &room).contains(&"back again".to_owned())
    });
}

fn syn_create(syn: &Synapse, token: &str, preset: &str) -> String {
    let (status, v) = syn_call(
        syn,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(token),
        Some(&json!({"preset": preset})),
    );
    assert_eq!(status, 200, "Synapse createRoom: {v}");
    v["room_id"].as_str().unwrap().to_owned()
}

#[test]
fn hearth_users_join_synapse_rooms_by_id_and_by_invite() {
    let py = synapse_python();
    let syn = start_synapse(&py);
    let home = start_home_with(&[
        ("HEARTH_FEDERATION__RETRY_MIN_MS", "500"),
        ("HEARTH_FEDERATION__RETRY_MAX_MS", "2000"),
    ]);
    let (sam, sam_t) = syn_register(&syn, "sam");
    let bob = register_user(&home.h, "bob");
    let carol = register_user(&home.h, "carol");

    // bob joins a public Synapse room by id, through Synapse.
    let room = syn_create(&syn, &sam_t, "public_chat");
    syn_send(&syn, &sam_t, &room, "before bob");
    let r = call(
        &home.h,
        "POST",
        &format!("/join/{}?server_name={}", enc(&room), enc(&syn.name)),
        &bob.token,
        Some(json!({})),
    );
    assert_eq!(r.status, 200, "bob's remote join: {:?}", r.json());
    assert_eq!(
        membership(&home, &bob, &room, &bob.id).as_deref(),
        Some("join")
    );
    let st = call(
        &home.h,
        "GET",
        &format!("/rooms/{room}/state"),
        &bob.token,
        None,
    )
    .json();
    assert_eq!(
        membership(&home, &bob, &room, &sam).as_deref(),
        Some("join"),
        "state: {st}"
    );
    within(60, "bob joined on Synapse", || {
        let (_, v) = syn_call(
            &syn,
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
            Some(&sam_t),
            None,
        );
        v["joined"][&bob.id].is_object()
    });
    // Messages both ways.
    syn_send(&syn, &sam_t, &room, "welcome, bob");
    within(60, "sam's message on hearth", || {
        hearth_bodies(&home, &bob, &room).contains(&"welcome, bob".to_owned())
    });
    hearth_send(&home, &bob, &room, "thanks, sam");
    within(60, "bob's message on Synapse", || {
        syn_bodies(&syn, &sam_t, &room).contains(&"thanks, sam".to_owned())
    });

    // carol is invited to a private Synapse room and accepts: hearth joins
    // through the inviting server.
    let private = syn_create(&syn, &sam_t, "private_chat");
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&private)),
        Some(&sam_t),
        Some(&json!({"user_id": carol.id})),
    );
    assert_eq!(status, 200, "Synapse invites carol: {v}");
    let r = call(
        &home.h,
        "POST",
        &format!("/rooms/{}/join", enc(&private)),
        &carol.token,
        Some(json!({})),
    );
    assert_eq!(r.status, 200, "carol accepts: {:?}", r.json());
    assert_eq!(
        membership(&home, &carol, &private, &carol.id).as_deref(),
        Some("join")
    );
    // erin is invited to a room no hearth user is in, and rejects:
    // make_leave/send_leave at the inviting server.
    let lonely = syn_create(&syn, &sam_t, "private_chat");
    let erin = register_user(&home.h, "erin");
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&lonely)),
        Some(&sam_t),
        Some(&json!({"user_id": erin.id})),
    );
    assert_eq!(status, 200, "Synapse invites erin: {v}");
    let r = call(
        &home.h,
        "POST",
        &format!("/rooms/{}/leave", enc(&lonely)),
        &erin.token,
        Some(json!({})),
    );
    assert_eq!(r.status, 200, "erin rejects: {:?}", r.json());
    within(60, "erin's rejection on Synapse", || {
        let (status, v) = syn_call(
            &syn,
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&lonely),
                enc(&erin.id)
            ),
            Some(&sam_t),
            None,
        );
        status == 200 && v["membership"] == "leave"
    });
    hearth_send(&home, &carol, &private, "hi from carol");
    within(60, "carol's message on Synapse", || {
        syn_bodies(&syn, &sam_t, &private).contains(&"hi from carol".to_owned())
    });
}

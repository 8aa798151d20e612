//! Interop with a real Synapse (`common::synapse`): membership across the
//! two servers and media both ways.
//! - a Synapse user invites a hearth user to a Synapse room no hearth user
//!   is in: the invite is in hearth's `/sync` (with its stripped state),
//!   the hearth user accepts, messages flow both ways, the hearth user
//!   leaves and Synapse sees the leave; an invite Synapse takes back (a
//!   kick of the invitee) moves to `rooms.leave`;
//! - a hearth user kicks and bans Synapse users from a hearth room, and
//!   Synapse sees both;
//! - a hearth user downloads a Synapse user's upload, and Synapse
//!   downloads a hearth upload (authenticated media over federation).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::fed::{membership, start_home_with, Home};
use common::synapse::{start_synapse, syn_call, syn_register, synapse_python, Synapse};
use common::{call, enc, ok, register_user, Registered};
use serde_json::{json, Value};

const FAST_RETRY: [(&str, &str); 2] = [
    ("HEARTH_FEDERATION__RETRY_MIN_MS", "500"),
    ("HEARTH_FEDERATION__RETRY_MAX_MS", "2000"),
];

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

/// Syncs on Synapse until `pred` holds, from each `next_batch` (Synapse
/// caches a response per since token).
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

fn bodies(v: &Value) -> Vec<String> {
    v["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn syn_bodies(syn: &Synapse, token: &str, room: &str) -> Vec<String> {
    let (_, v) = syn_call(
        syn,
        "GET",
        &format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            enc(room)
        ),
        Some(token),
        None,
    );
    bodies(&v)
}

fn hearth_bodies(home: &Home, user: &Registered, room: &str) -> Vec<String> {
    let r = call(
        &home.h,
        "GET",
        &format!("/rooms/{}/messages?dir=b&limit=50", enc(room)),
        &user.token,
        None,
    );
    if r.status != 200 {
        return Vec::new();
    }
    bodies(&r.json())
}

fn syn_create(syn: &Synapse, token: &str, preset: &str) -> String {
    let (status, v) = syn_call(
        syn,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(token),
        Some(&json!({"preset": preset, "name": "Synapse room"})),
    );
    assert_eq!(status, 200, "Synapse createRoom: {v}");
    v["room_id"].as_str().unwrap().to_owned()
}

/// A raw request to Synapse's client listener (HTTP/1.0): (status, body).
fn syn_raw(
    syn: &Synapse,
    method: &str,
    path: &str,
    token: &str,
    ct: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(syn.client).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out[split + 4..].to_vec())
}

#[test]
fn synapse_invites_a_hearth_user_who_accepts_talks_and_leaves() {
    let py = synapse_python();
    let syn = start_synapse(&py);
    let home = start_home_with(&FAST_RETRY);
    let (sam, sam_t) = syn_register(&syn, "sam");
    let bob = register_user(&home.h, "bob");
    let first = ok(call(&home.h, "GET", "/sync?timeout=0", &bob.token, None));
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    let room = syn_create(&syn, &sam_t, "private_chat");
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
        Some(&sam_t),
        Some(&json!({"user_id": bob.id})),
    );
    assert_eq!(status, 200, "Synapse invites bob: {v}");

    // The invite in an incremental sync, then in an initial one.
    let mut seen = None;
    within(60, "bob's invite in hearth's /sync", || {
        let v = ok(call(
            &home.h,
            "GET",
            &format!("/sync?timeout=1000&since={}", enc(&since)),
            &bob.token,
            None,
        ));
        since = v["next_batch"].as_str().unwrap().to_owned();
        if v["rooms"]["invite"][&room].is_object() {
            seen = Some(v["rooms"]["invite"][&room].clone());
            return true;
        }
        false
    });
    let invite = seen.unwrap();
    let events = invite["invite_state"]["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "m.room.member", "{invite}");
    assert_eq!(last["sender"], sam.as_str());
    assert_eq!(last["content"]["membership"], "invite");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Synapse room"),
        "{invite}"
    );
    let initial = ok(call(&home.h, "GET", "/sync?timeout=0", &bob.token, None));
    assert!(initial["rooms"]["invite"][&room].is_object(), "{initial}");

    // bob accepts; the room moves to `join`; messages both ways.
    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{}/join", enc(&room)),
        &bob.token,
        Some(json!({})),
    ));
    // The join is a partial-state one: a sync without lazy-loaded members
    // shows the room once hearth has its full state (as Synapse's does).
    let mut v = Value::Null;
    within(30, "the joined room in hearth's /sync", || {
        v = ok(call(
            &home.h,
            "GET",
            &format!("/sync?timeout=0&since={}", enc(&since)),
            &bob.token,
            None,
        ));
        v["rooms"]["join"][&room].is_object()
    });
    assert!(v["rooms"]["invite"].get(&room).is_none(), "{v}");
    let (status, _) = syn_call(
        &syn,
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
            enc(&room)
        ),
        Some(&sam_t),
        Some(&json!({"msgtype": "m.text", "body": "hi bob"})),
    );
    assert_eq!(status, 200);
    within(60, "sam's message on hearth", || {
        hearth_bodies(&home, &bob, &room).contains(&"hi bob".to_owned())
    });
    ok(call(
        &home.h,
        "PUT",
        &format!("/rooms/{}/send/m.room.message/t2", enc(&room)),
        &bob.token,
        Some(json!({"msgtype": "m.text", "body": "hi sam"})),
    ));
    within(60, "bob's message on Synapse", || {
        syn_bodies(&syn, &sam_t, &room).contains(&"hi sam".to_owned())
    });

    // bob, the only hearth user in the room, leaves: Synapse sees it.
    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{}/leave", enc(&room)),
        &bob.token,
        None,
    ));
    within(60, "bob's leave on Synapse", || {
        let (status, v) = syn_call(
            &syn,
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.id)
            ),
            Some(&sam_t),
            None,
        );
        status == 200 && v["membership"] == "leave"
    });

    // sam invites erin, then takes the invite back (a kick of the invitee):
    // Synapse sends the leave to erin's server, and her invite moves to
    // `rooms.leave`.
    let erin = register_user(&home.h, "erin");
    let first = ok(call(&home.h, "GET", "/sync?timeout=0", &erin.token, None));
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let other = syn_create(&syn, &sam_t, "private_chat");
    let (status, v) = syn_call(
        &syn,
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&other)),
        Some(&sam_t),
        Some(&json!({"user_id": erin.id})),
    );
    assert_eq!(status, 200, "Synapse invites erin: {v}");
    let mut invited = false;
    within(
        60,
        "erin's invite, then its retraction, in hearth's /sync",
        || {
            let v = ok(call(
                &home.h,
                "GET",
                &format!("/sync?timeout=1000&since={}", enc(&since)),
                &erin.token,
                None,
            ));
            since = v["next_batch"].as_str().unwrap().to_owned();
            if !invited && v["rooms"]["invite"][&other].is_object() {
                invited = true;
                let (status, v) = syn_call(
                    &syn,
                    "POST",
                    &format!("/_matrix/client/v3/rooms/{}/kick", enc(&other)),
                    Some(&sam_t),
                    Some(&json!({"user_id": erin.id})),
                );
                assert_eq!(status, 200, "Synapse rescinds: {v}");
            }
            invited && v["rooms"]["leave"][&other].is_object()
        },
    );
}

#[test]
fn hearth_kicks_and_bans_synapse_users_and_media_flows_both_ways() {
    let py = synapse_python();
    let syn = start_synapse(&py);
    let home = start_home_with(&FAST_RETRY);
    let alice = register_user(&home.h, "alice");
    let (kim, kim_t) = syn_register(&syn, "kim");
    let (lee, lee_t) = syn_register(&syn, "lee");
    let room = ok(call(
        &home.h,
        "POST",
        "/createRoom",
        &alice.token,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for t in [&kim_t, &lee_t] {
        let (status, v) = syn_call(
            &syn,
            "POST",
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(&home.name)
            ),
            Some(t),
            Some(&json!({})),
        );
        assert_eq!(status, 200, "join: {v}");
    }
    assert_eq!(
        membership(&home, &alice, &room, &lee).as_deref(),
        Some("join")
    );

    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{room}/kick"),
        &alice.token,
        Some(json!({"user_id": kim, "reason": "bye"})),
    ));
    syn_sync_until(&syn, &kim_t, 60, "kim's kick on Synapse", |v| {
        v["rooms"]["leave"][&room].is_object()
    });
    ok(call(
        &home.h,
        "POST",
        &format!("/rooms/{room}/ban"),
        &alice.token,
        Some(json!({"user_id": lee})),
    ));
    syn_sync_until(&syn, &lee_t, 60, "lee's ban on Synapse", |v| {
        v["rooms"]["leave"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|evs| {
                evs.iter()
                    .any(|e| e["state_key"] == lee.as_str() && e["content"]["membership"] == "ban")
            })
    });

    // Media: Synapse's upload downloaded through hearth, and hearth's
    // through Synapse.
    let text = b"bytes kept on synapse".to_vec();
    let (status, body) = syn_raw(
        &syn,
        "POST",
        "/_matrix/media/v3/upload?filename=s.txt",
        &kim_t,
        "text/plain",
        &text,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let uri: Value = serde_json::from_slice(&body).unwrap();
    let syn_id = uri["content_uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let r = call(
        &home.h,
        "GET",
        &format!("/_matrix/client/v1/media/download/{}/{syn_id}", syn.name),
        &alice.token,
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, text);

    let mine = b"bytes kept on hearth".to_vec();
    let up = common::request(
        &home.h,
        "POST",
        "/_matrix/media/v3/upload?filename=h.txt",
        Some(&alice.token),
        &mine,
    );
    assert_eq!(up.status, 200, "{}", String::from_utf8_lossy(&up.body));
    let hearth_id = up.json()["content_uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let (status, got) = syn_raw(
        &syn,
        "GET",
        &format!(
            "/_matrix/client/v1/media/download/{}/{hearth_id}",
            home.name
        ),
        &kim_t,
        "application/json",
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
    assert_eq!(got, mine);
}

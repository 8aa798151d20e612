//! The admin API answers as Synapse's does: the same requests (the most
//! used admin calls, in one script) go to a real Synapse (PyPI,
//! `common::synapse`) and to hearth, and the answers must have the same
//! status codes, the same errcodes, and the same shapes: the same keys
//! with the same JSON types, values aside (ids, timestamps, versions). A
//! `null` on either side matches any type: fields like `last_seen_ts`
//! or `avatar_url` are null or not depending on what happened before.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::synapse::{start_synapse, syn_call, syn_register, synapse_python};
use common::{enc, json_request, register_user, Hearth, Opts};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

type CallFn<'a> = Box<dyn Fn(&str, &str, Option<&str>, Option<&Value>) -> (u16, Value) + 'a>;

/// One server under test: how to call it, its name, an admin and a user.
struct Server<'a> {
    call: CallFn<'a>,
    name: String,
    admin: String,
    bob: String,
}

/// What one step of the script answered.
struct Answer {
    label: &'static str,
    status: u16,
    body: Value,
}

const V1: &str = "/_synapse/admin/v1";
const V2: &str = "/_synapse/admin/v2";

/// The script: every call the admin API promises, in an order that
/// gives each something to act on.
fn script(s: &Server) -> Vec<Answer> {
    let mut out = Vec::new();
    let c = |m: &str, p: &str, t: Option<&str>, b: Option<Value>| (s.call)(m, p, t, b.as_ref());
    let admin = Some(s.admin.as_str());
    let bob = Some(s.bob.as_str());
    let carol = enc(&format!("@carol:{}", s.name));
    let bob_id = enc(&format!("@bob:{}", s.name));
    let mut step = |label: &'static str, (status, body): (u16, Value)| {
        out.push(Answer {
            label,
            status,
            body: body.clone(),
        });
        body
    };

    step(
        "server_version",
        c("GET", &format!("{V1}/server_version"), None, None),
    );
    step(
        "users as non-admin",
        c("GET", &format!("{V2}/users"), bob, None),
    );
    step(
        "users without token",
        c("GET", &format!("{V2}/users"), None, None),
    );
    step(
        "create user",
        c(
            "PUT",
            &format!("{V2}/users/{carol}"),
            admin,
            Some(json!({"password": "carolpw", "displayname": "Carol"})),
        ),
    );
    step(
        "modify user",
        c(
            "PUT",
            &format!("{V2}/users/{carol}"),
            admin,
            Some(json!({"displayname": "Carol B"})),
        ),
    );
    step(
        "list users",
        c("GET", &format!("{V2}/users?limit=1"), admin, None),
    );
    step(
        "list users, bad order_by",
        c("GET", &format!("{V2}/users?order_by=bogus"), admin, None),
    );
    step(
        "list users, bad from",
        c("GET", &format!("{V2}/users?from=-1"), admin, None),
    );
    step(
        "query user",
        c("GET", &format!("{V2}/users/{carol}"), admin, None),
    );
    step(
        "query unknown user",
        c(
            "GET",
            &format!("{V2}/users/{}", enc(&format!("@nobody:{}", s.name))),
            admin,
            None,
        ),
    );
    step(
        "whois",
        c("GET", &format!("{V1}/whois/{bob_id}"), admin, None),
    );
    step(
        "client whois of oneself",
        c(
            "GET",
            &format!("/_matrix/client/v3/admin/whois/{bob_id}"),
            bob,
            None,
        ),
    );
    step(
        "reset password",
        c(
            "POST",
            &format!("{V1}/reset_password/{carol}"),
            admin,
            Some(json!({"new_password": "carolpw2", "logout_devices": true})),
        ),
    );
    step(
        "admin flag",
        c("GET", &format!("{V1}/users/{bob_id}/admin"), admin, None),
    );

    // A room with a member and a message.
    let (_, v) = c(
        "POST",
        "/_matrix/client/v3/createRoom",
        admin,
        Some(json!({"name": "R1", "topic": "t", "preset": "public_chat"})),
    );
    let room = v["room_id"].as_str().expect("room_id").to_owned();
    let r = enc(&room);
    c(
        "POST",
        &format!("/_matrix/client/v3/join/{r}"),
        bob,
        Some(json!({})),
    );
    let (_, v) = c(
        "PUT",
        &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/t1"),
        bob,
        Some(json!({"msgtype": "m.text", "body": "hi"})),
    );
    let event = v["event_id"].as_str().expect("event_id").to_owned();

    step("list rooms", c("GET", &format!("{V1}/rooms"), admin, None));
    step(
        "room details",
        c("GET", &format!("{V1}/rooms/{r}"), admin, None),
    );
    step(
        "room members",
        c("GET", &format!("{V1}/rooms/{r}/members"), admin, None),
    );
    step(
        "unknown room",
        c(
            "GET",
            &format!("{V1}/rooms/{}", enc(&format!("!nope:{}", s.name))),
            admin,
            None,
        ),
    );

    step(
        "report event",
        c(
            "POST",
            &format!("/_matrix/client/v3/rooms/{r}/report/{}", enc(&event)),
            bob,
            Some(json!({"reason": "spam", "score": -100})),
        ),
    );
    let list = step(
        "list event reports",
        c("GET", &format!("{V1}/event_reports"), admin, None),
    );
    let id = list["event_reports"][0]["id"].as_i64().unwrap_or(0);
    step(
        "get event report",
        c("GET", &format!("{V1}/event_reports/{id}"), admin, None),
    );
    step(
        "get unknown event report",
        c("GET", &format!("{V1}/event_reports/999999"), admin, None),
    );
    step(
        "delete event report",
        c("DELETE", &format!("{V1}/event_reports/{id}"), admin, None),
    );

    let t = format!("{V1}/registration_tokens");
    step(
        "new token",
        c("POST", &format!("{t}/new"), admin, Some(json!({}))),
    );
    step(
        "new named token",
        c(
            "POST",
            &format!("{t}/new"),
            admin,
            Some(json!({"token": "abcd", "uses_allowed": 3})),
        ),
    );
    step(
        "new token, taken",
        c(
            "POST",
            &format!("{t}/new"),
            admin,
            Some(json!({"token": "abcd"})),
        ),
    );
    step("list tokens", c("GET", &t, admin, None));
    step("get token", c("GET", &format!("{t}/abcd"), admin, None));
    step(
        "update token",
        c(
            "PUT",
            &format!("{t}/abcd"),
            admin,
            Some(json!({"expiry_time": 4_102_444_800_000i64})),
        ),
    );
    step(
        "delete token",
        c("DELETE", &format!("{t}/abcd"), admin, None),
    );
    step(
        "get deleted token",
        c("GET", &format!("{t}/abcd"), admin, None),
    );

    let v = step(
        "purge history",
        c(
            "POST",
            &format!("{V1}/purge_history/{r}"),
            admin,
            Some(json!({"delete_local_events": true, "purge_up_to_event_id": event})),
        ),
    );
    let purge = v["purge_id"].as_str().unwrap_or("x").to_owned();
    let status = poll(|| {
        c(
            "GET",
            &format!("{V1}/purge_history_status/{purge}"),
            admin,
            None,
        )
    });
    step("purge status", status);
    step(
        "unknown purge status",
        c(
            "GET",
            &format!("{V1}/purge_history_status/nope"),
            admin,
            None,
        ),
    );

    step(
        "delete room (v1)",
        c(
            "DELETE",
            &format!("{V1}/rooms/{r}"),
            admin,
            Some(json!({"block": true, "purge": true})),
        ),
    );
    let (_, v) = c(
        "POST",
        "/_matrix/client/v3/createRoom",
        admin,
        Some(json!({"name": "R2"})),
    );
    let r2 = enc(v["room_id"].as_str().expect("room_id"));
    let v = step(
        "delete room (v2)",
        c(
            "DELETE",
            &format!("{V2}/rooms/{r2}"),
            admin,
            Some(json!({"purge": true})),
        ),
    );
    let del = v["delete_id"].as_str().unwrap_or("x").to_owned();
    let status = poll(|| {
        c(
            "GET",
            &format!("{V2}/rooms/delete_status/{del}"),
            admin,
            None,
        )
    });
    step("delete status", status);
    step(
        "delete status of room",
        c(
            "GET",
            &format!("{V2}/rooms/{r2}/delete_status"),
            admin,
            None,
        ),
    );
    step(
        "unknown delete status",
        c(
            "GET",
            &format!("{V2}/rooms/delete_status/nope"),
            admin,
            None,
        ),
    );
    step(
        "deactivate",
        c(
            "POST",
            &format!("{V1}/deactivate/{carol}"),
            admin,
            Some(json!({"erase": true})),
        ),
    );
    out
}

/// Polls a task status until it is no longer running.
fn poll(f: impl Fn() -> (u16, Value)) -> (u16, Value) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = f();
        let s = v["status"].as_str().unwrap_or("");
        if status != 200 || !matches!(s, "active" | "scheduled" | "purging" | "shutting_down") {
            return (status, v);
        }
        assert!(Instant::now() < until, "task never finished: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Differences of shape between Synapse's `a` and hearth's `b`.
fn shape_diff(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if a.is_null() || b.is_null() {
        return;
    }
    if kind(a) != kind(b) {
        out.push(format!("{at}: Synapse has {}, hearth {}", kind(a), kind(b)));
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    None => out.push(format!("{at}.{k}: missing in hearth")),
                    // Keyed by server name: a value, not a shape.
                    Some(_) if k == "signatures" => {}
                    Some(vb) => shape_diff(&format!("{at}.{k}"), va, vb, out),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{at}.{k}: only in hearth"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if let (Some(va), Some(vb)) = (x.first(), y.first()) {
                shape_diff(&format!("{at}[0]"), va, vb, out);
            }
        }
        _ => {}
    }
}

fn hearth_admin(h: &Hearth, url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "register-user",
            "--user",
            "admin",
            "--password",
            "adminpw",
            "--admin",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_DATA_DIR", h.data_dir.path())
        .env("HEARTH_DATABASE__URL", url)
        .output()
        .expect("run hearth register-user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json_request(
        h,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(&json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "admin"}, "password": "adminpw"})),
    );
    assert_eq!(r.status, 200);
    r.json()["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn admin_api_answers_as_synapse_does() {
    let py = synapse_python();
    let syn = start_synapse(&py);
    // Synapse's own tool makes its admin (shared-secret registration).
    let out = Command::new(&py)
        .args([
            "-m",
            "synapse._scripts.register_new_matrix_user",
            "-u",
            "admin",
            "-p",
            "adminpw",
            "-a",
            "-k",
            "s3cret",
        ])
        .arg(format!("http://{}", syn.client))
        .output()
        .expect("run register_new_matrix_user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, v) = syn_call(
        &syn,
        "POST",
        "/_matrix/client/v3/login",
        None,
        Some(&json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "admin"}, "password": "adminpw"})),
    );
    assert_eq!(status, 200, "{v}");
    let syn_admin = v["access_token"].as_str().unwrap().to_owned();
    let (_, syn_bob) = syn_register(&syn, "bob");
    let synapse = Server {
        call: Box::new(|m, p, t, b| syn_call(&syn, m, p, t, b)),
        name: syn.name.clone(),
        admin: syn_admin,
        bob: syn_bob,
    };

    let db = TestCluster::shared().fresh_database();
    let url = db.url();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &url));
    let admin = hearth_admin(&h, &url);
    let bob = register_user(&h, "bob").token;
    let hearth = Server {
        call: Box::new(|m, p, t, b| {
            let r = json_request(&h, m, p, t, b);
            let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.status, v)
        }),
        name: "localhost".into(),
        admin,
        bob,
    };

    let theirs = script(&synapse);
    let ours = script(&hearth);
    assert_eq!(theirs.len(), ours.len());
    let mut diffs = Vec::new();
    for (a, b) in theirs.iter().zip(&ours) {
        if a.status != b.status {
            diffs.push(format!(
                "{}: status Synapse {} {}, hearth {} {}",
                a.label, a.status, a.body, b.status, b.body
            ));
            continue;
        }
        if a.body["errcode"] != b.body["errcode"] {
            diffs.push(format!(
                "{}: errcode Synapse {}, hearth {}",
                a.label, a.body["errcode"], b.body["errcode"]
            ));
        }
        let mut d = Vec::new();
        shape_diff(a.label, &a.body, &b.body, &mut d);
        if !d.is_empty() {
            diffs.push(format!(
                "{}\n    Synapse: {}\n    hearth:  {}",
                d.join("\n  "),
                a.body,
                b.body
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

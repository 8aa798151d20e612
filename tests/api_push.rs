//! End-to-end: `/capabilities`, `/versions`, push rules, pushers and
//! notifications over HTTP against the real binary (2 shards, or 1 under
//! `HEARTH_TEST_SHARDS=1`) and a real PostgreSQL, with their failure cases.

mod common;

use common::{assert_err, call, json_request, ok, Hearth, Opts, V3};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

fn start() -> Hearth {
    let db = TestCluster::shared().fresh_database();
    Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()))
}

#[test]
fn capabilities_need_auth_and_list_what_hearth_serves() {
    let h = start();
    // The spec requires authentication for /capabilities.
    let r = json_request(&h, "GET", &format!("{V3}/capabilities"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
    let r = json_request(&h, "GET", &format!("{V3}/capabilities"), Some("nope"), None);
    assert_err(&r, 401, "M_UNKNOWN_TOKEN");

    let alice = common::register(&h, "alice");
    let caps = ok(call(&h, "GET", "/capabilities", &alice, None))["capabilities"].clone();
    let versions = &caps["m.room_versions"];
    assert_eq!(versions["default"], "12");
    let available = versions["available"].as_object().unwrap();
    let mut served: Vec<&str> = available.keys().map(String::as_str).collect();
    served.sort();
    assert_eq!(served, ["10", "11", "12"]);
    assert!(available.values().all(|v| v == "stable"));
    // Every advertised version really creates a room, and the default is used
    // when none is asked for.
    for v in served {
        let room = ok(call(
            &h,
            "POST",
            "/createRoom",
            &alice,
            Some(json!({"room_version": v})),
        ))["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let create = ok(call(
            &h,
            "GET",
            &format!("/rooms/{room}/state/m.room.create"),
            &alice,
            None,
        ));
        assert_eq!(create["room_version"], v);
    }
    let r = call(
        &h,
        "POST",
        "/createRoom",
        &alice,
        Some(json!({"room_version": "9"})),
    );
    assert_err(&r, 400, "M_UNSUPPORTED_ROOM_VERSION");

    assert_eq!(caps["m.change_password"]["enabled"], true);
    assert_eq!(caps["m.set_displayname"]["enabled"], true);
    assert_eq!(caps["m.set_avatar_url"]["enabled"], true);
    assert_eq!(caps["m.3pid_changes"]["enabled"], false);
    assert_eq!(caps["m.get_login_token"]["enabled"], false);
    // The r0 alias answers the same.
    let r0 = ok(call(
        &h,
        "GET",
        "/_matrix/client/r0/capabilities",
        &alice,
        None,
    ));
    assert_eq!(r0["capabilities"], caps);

    // What the capabilities claim works: display name, avatar, password.
    let me = common::register_user(&h, "bob");
    let id = common::enc(&me.id);
    ok(call(
        &h,
        "PUT",
        &format!("/profile/{id}/displayname"),
        &me.token,
        Some(json!({"displayname": "Bob"})),
    ));
    ok(call(
        &h,
        "PUT",
        &format!("/profile/{id}/avatar_url"),
        &me.token,
        Some(json!({"avatar_url": "mxc://x/y"})),
    ));
    let p = ok(call(&h, "GET", &format!("/profile/{id}"), &me.token, None));
    assert_eq!(p["displayname"], "Bob");
    assert_eq!(p["avatar_url"], "mxc://x/y");
}

#[test]
fn versions_claim_no_unstable_feature() {
    let h = start();
    let v = ok(json_request(
        &h,
        "GET",
        "/_matrix/client/versions",
        None,
        None,
    ));
    let versions: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    // matrix-js-sdk needs v1.1 at least; hearth targets up to v1.12.
    assert!(versions.contains(&"v1.1"), "{versions:?}");
    assert!(versions.contains(&"v1.12"), "{versions:?}");
    // No unstable feature is switched on: none is implemented.
    let unstable = v["unstable_features"].as_object().unwrap();
    assert!(
        unstable.values().all(|f| f == &Value::Bool(false)),
        "{unstable:?}"
    );
}

fn ids(set: &Value, kind: &str) -> Vec<String> {
    set[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

fn rule_path(kind: &str, id: &str) -> String {
    format!("/pushrules/global/{kind}/{}", common::enc(id))
}

fn global_account_data(sync: &Value, kind: &str) -> Option<Value> {
    sync["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
        .map(|e| e["content"].clone())
}

#[test]
fn push_rules_defaults_edits_errors_sync_and_restart() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    let h = Hearth::start(opts.clone());
    let alice = common::register_user(&h, "alice");
    let bob = common::register_user(&h, "bob");
    let a = alice.token.as_str();

    let r = json_request(&h, "GET", &format!("{V3}/pushrules/"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");

    // The spec's server-default rules, for this user.
    let all = ok(call(&h, "GET", "/pushrules/", a, None));
    let global = all["global"].clone();
    assert_eq!(ok(call(&h, "GET", "/pushrules/global/", a, None)), global);
    // Every kind is listed, empty or not (clients iterate them).
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(global[kind].is_array(), "{kind} in {global}");
    }
    let over = ids(&global, "override");
    assert_eq!(over[0], ".m.rule.master");
    for id in [
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.tombstone",
        ".m.rule.reaction",
    ] {
        assert!(over.contains(&id.to_owned()), "{id} in {over:?}");
    }
    let under = ids(&global, "underride");
    for id in [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ] {
        assert!(under.contains(&id.to_owned()), "{id} in {under:?}");
    }
    let invite = ok(call(
        &h,
        "GET",
        &rule_path("override", ".m.rule.invite_for_me"),
        a,
        None,
    ));
    assert!(invite.to_string().contains(&alice.id), "{invite}");
    let master = ok(call(
        &h,
        "GET",
        &rule_path("override", ".m.rule.master"),
        a,
        None,
    ));
    assert_eq!(master["default"], true);
    assert_eq!(master["enabled"], false);

    // Unknown rules and kinds.
    let r = call(&h, "GET", &rule_path("override", "nope"), a, None);
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(&h, "GET", &rule_path("bogus", "x"), a, None);
    assert_err(&r, 400, "M_INVALID_PARAM");
    let r = call(
        &h,
        "GET",
        &format!("{}/enabled", rule_path("override", "nope")),
        a,
        None,
    );
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(
        &h,
        "GET",
        &format!("{}/actions", rule_path("override", "nope")),
        a,
        None,
    );
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(
        &h,
        "PUT",
        &format!("{}/enabled", rule_path("override", "nope")),
        a,
        Some(json!({"enabled": true})),
    );
    assert_err(&r, 404, "M_NOT_FOUND");

    // Adding user rules, ordered with before/after.
    let cake = json!({"pattern": "cake*lie", "actions": ["notify"]});
    ok(call(
        &h,
        "PUT",
        &rule_path("content", "cake"),
        a,
        Some(cake.clone()),
    ));
    ok(call(
        &h,
        "PUT",
        &rule_path("content", "pie"),
        a,
        Some(cake.clone()),
    ));
    ok(call(
        &h,
        "PUT",
        &format!("{}?after=cake", rule_path("content", "tart")),
        a,
        Some(cake.clone()),
    ));
    ok(call(
        &h,
        "PUT",
        &format!("{}?before=pie", rule_path("content", "scone")),
        a,
        Some(cake.clone()),
    ));
    let set = ok(call(&h, "GET", "/pushrules/global/", a, None));
    assert_eq!(ids(&set, "content")[..4], ["scone", "pie", "cake", "tart"]);
    let got = ok(call(&h, "GET", &rule_path("content", "cake"), a, None));
    assert_eq!(got["pattern"], "cake*lie");
    assert_eq!(got["actions"], json!(["notify"]));
    assert_eq!(got["enabled"], true);
    assert_eq!(got["default"], false);
    // Replacing keeps the place.
    ok(call(
        &h,
        "PUT",
        &rule_path("content", "cake"),
        a,
        Some(json!({"pattern": "cake", "actions": []})),
    ));
    let set = ok(call(&h, "GET", "/pushrules/global/", a, None));
    assert_eq!(ids(&set, "content")[..4], ["scone", "pie", "cake", "tart"]);

    // Override rules go after .m.rule.master; room and sender rules take ids.
    ok(call(
        &h,
        "PUT",
        &rule_path("override", "quiet"),
        a,
        Some(json!({"actions": [], "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "shh"}
        ]})),
    ));
    let set = ok(call(&h, "GET", "/pushrules/global/", a, None));
    assert_eq!(ids(&set, "override")[..2], [".m.rule.master", "quiet"]);
    ok(call(
        &h,
        "PUT",
        &rule_path("room", "!r:localhost"),
        a,
        Some(json!({"actions": ["notify", {"set_tweak": "sound", "value": "default"}]})),
    ));
    ok(call(
        &h,
        "PUT",
        &rule_path("sender", &bob.id),
        a,
        Some(json!({"actions": []})),
    ));
    let room_rule = ok(call(&h, "GET", &rule_path("room", "!r:localhost"), a, None));
    assert_eq!(room_rule["actions"][1]["set_tweak"], "sound");

    // Refused PUTs.
    for (path, body, status, code) in [
        (
            rule_path("content", ".m.mine"),
            cake.clone(),
            400,
            "M_INVALID_PARAM",
        ),
        (
            rule_path("content", "a\\b"),
            cake.clone(),
            400,
            "M_INVALID_PARAM",
        ),
        (
            format!("{}?before=nope", rule_path("content", "x")),
            cake.clone(),
            400,
            "M_UNKNOWN",
        ),
        (
            format!(
                "{}?after=.m.rule.contains_user_name",
                rule_path("content", "x")
            ),
            cake.clone(),
            400,
            "M_UNKNOWN",
        ),
        (
            format!("{}?before=cake&after=tart", rule_path("content", "x")),
            cake.clone(),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("content", "x"),
            json!({"actions": ["notify"]}),
            400,
            "M_BAD_JSON",
        ),
        (
            rule_path("override", "x"),
            json!({"pattern": "p"}),
            400,
            "M_BAD_JSON",
        ),
        (
            rule_path("override", "x"),
            json!({"actions": ["fly"]}),
            400,
            "M_BAD_JSON",
        ),
        (
            rule_path("override", "x"),
            json!({"actions": [], "conditions": 1}),
            400,
            "M_BAD_JSON",
        ),
        (
            rule_path("room", "not-a-room"),
            json!({"actions": []}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            rule_path("sender", "bob"),
            json!({"actions": []}),
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        let r = call(&h, "PUT", &path, a, Some(body));
        assert_err(&r, status, code);
    }
    let r = common::request(
        &h,
        "PUT",
        &format!("{V3}{}", rule_path("content", "x")),
        Some(a),
        b"",
    );
    assert_err(&r, 400, "M_NOT_JSON");
    let set = ok(call(&h, "GET", "/pushrules/global/", a, None));
    assert!(!ids(&set, "content").contains(&"x".to_owned()));

    // enabled and actions, on default and user rules.
    let master_enabled = format!("{}/enabled", rule_path("override", ".m.rule.master"));
    ok(call(
        &h,
        "PUT",
        &master_enabled,
        a,
        Some(json!({"enabled": true})),
    ));
    assert_eq!(
        ok(call(&h, "GET", &master_enabled, a, None)),
        json!({"enabled": true})
    );
    let r = call(
        &h,
        "PUT",
        &master_enabled,
        a,
        Some(json!({"enabled": "yes"})),
    );
    assert_err(&r, 400, "M_BAD_JSON");
    let msg_actions = format!("{}/actions", rule_path("underride", ".m.rule.message"));
    ok(call(
        &h,
        "PUT",
        &msg_actions,
        a,
        Some(json!({"actions": []})),
    ));
    assert_eq!(
        ok(call(&h, "GET", &msg_actions, a, None)),
        json!({"actions": []})
    );
    let r = call(
        &h,
        "PUT",
        &msg_actions,
        a,
        Some(json!({"actions": "notify"})),
    );
    assert_err(&r, 400, "M_BAD_JSON");
    let pie_enabled = format!("{}/enabled", rule_path("content", "pie"));
    ok(call(
        &h,
        "PUT",
        &pie_enabled,
        a,
        Some(json!({"enabled": false})),
    ));
    // Replacing a rule keeps whether it is enabled (ruma, as Synapse).
    ok(call(
        &h,
        "PUT",
        &rule_path("content", "pie"),
        a,
        Some(cake.clone()),
    ));
    assert_eq!(
        ok(call(&h, "GET", &pie_enabled, a, None)),
        json!({"enabled": false})
    );

    // Deleting: user rules go, server-default rules stay.
    let r = call(
        &h,
        "DELETE",
        &rule_path("override", ".m.rule.master"),
        a,
        None,
    );
    assert_err(&r, 400, "M_UNKNOWN");
    ok(call(&h, "DELETE", &rule_path("content", "tart"), a, None));
    let r = call(&h, "GET", &rule_path("content", "tart"), a, None);
    assert_err(&r, 404, "M_NOT_FOUND");
    let r = call(&h, "DELETE", &rule_path("content", "tart"), a, None);
    assert_err(&r, 404, "M_NOT_FOUND");

    // Each user has their own rules.
    let bobs = ok(call(&h, "GET", "/pushrules/global/", &bob.token, None));
    assert!(!ids(&bobs, "content").contains(&"cake".to_owned()));
    let r = call(&h, "GET", &master_enabled, &bob.token, None);
    assert_eq!(ok(r), json!({"enabled": false}));

    // The set is the user's m.push_rules account data: in /sync, readable,
    // not writable directly.
    let sync = ok(call(&h, "GET", "/sync", a, None));
    let in_sync = global_account_data(&sync, "m.push_rules").expect("m.push_rules in /sync");
    let set = ok(call(&h, "GET", "/pushrules/", a, None));
    assert_eq!(in_sync, set);
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    ok(call(&h, "DELETE", &rule_path("content", "scone"), a, None));
    let sync = ok(call(
        &h,
        "GET",
        &format!("/sync?since={since}&timeout=5000"),
        a,
        None,
    ));
    let in_sync = global_account_data(&sync, "m.push_rules").expect("changed m.push_rules");
    assert!(!ids(&in_sync["global"], "content").contains(&"scone".to_owned()));
    let uid = common::enc(&alice.id);
    let r = call(
        &h,
        "PUT",
        &format!("/user/{uid}/account_data/m.push_rules"),
        a,
        Some(json!({"global": {}})),
    );
    assert_eq!(r.status, 405);

    // Concurrent changes of one user are none of them lost.
    let addr = h.addr;
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let t = alice.token.clone();
            std::thread::spawn(move || {
                let body = json!({"pattern": format!("w{i}"), "actions": ["notify"]});
                common::request_to(
                    addr,
                    "PUT",
                    &format!("{V3}/pushrules/global/content/w{i}"),
                    Some(&t),
                    body.to_string().as_bytes(),
                )
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().status, 200);
    }
    let before_restart = ok(call(&h, "GET", "/pushrules/", a, None));
    let content = ids(&before_restart["global"], "content");
    for i in 0..8 {
        assert!(content.contains(&format!("w{i}")), "w{i} in {content:?}");
    }

    // Durable: a new process on the same database serves the same rules.
    drop(h);
    let h = Hearth::start(opts);
    assert_eq!(ok(call(&h, "GET", "/pushrules/", a, None)), before_restart);
}

fn pusher(app_id: &str, pushkey: &str, lang: &str) -> Value {
    json!({
        "kind": "http", "app_id": app_id, "pushkey": pushkey,
        "app_display_name": "Mat Rix", "device_display_name": "iPhone 9",
        "profile_tag": "xxyyzz", "lang": lang,
        "data": {"url": "https://push.example/_matrix/push/v1/notify", "format": "event_id_only", "custom": 1},
    })
}

fn pushkeys(h: &Hearth, token: &str) -> Vec<(String, String)> {
    let list = ok(call(h, "GET", "/pushers", token, None))["pushers"].clone();
    let mut keys: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["app_id"].as_str().unwrap().to_owned(),
                p["pushkey"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys
}

fn keys(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, k)| (a.to_string(), k.to_string()))
        .collect()
}

#[test]
fn pushers_set_list_replace_delete_and_notifications() {
    let h = start();
    let r = json_request(&h, "GET", &format!("{V3}/pushers"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
    let r = json_request(&h, "GET", &format!("{V3}/notifications"), None, None);
    assert_err(&r, 401, "M_MISSING_TOKEN");
    let alice = common::register(&h, "alice");
    let bob = common::register(&h, "bob");
    let a = alice.as_str();

    assert_eq!(
        ok(call(&h, "GET", "/pushers", a, None)),
        json!({"pushers": []})
    );
    ok(call(
        &h,
        "POST",
        "/pushers/set",
        a,
        Some(pusher("app", "k1", "en")),
    ));
    let list = ok(call(&h, "GET", "/pushers", a, None));
    assert_eq!(
        list,
        json!({"pushers": [{
            "app_id": "app", "pushkey": "k1", "kind": "http",
            "app_display_name": "Mat Rix", "device_display_name": "iPhone 9",
            "profile_tag": "xxyyzz", "lang": "en",
            "data": {"url": "https://push.example/_matrix/push/v1/notify", "format": "event_id_only", "custom": 1},
        }]})
    );
    // Same app id and pushkey: updated, not added.
    ok(call(
        &h,
        "POST",
        "/pushers/set",
        a,
        Some(pusher("app", "k1", "fr")),
    ));
    let list = ok(call(&h, "GET", "/pushers", a, None));
    assert_eq!(list["pushers"].as_array().unwrap().len(), 1);
    assert_eq!(list["pushers"][0]["lang"], "fr");
    ok(call(
        &h,
        "POST",
        "/pushers/set",
        a,
        Some(pusher("app", "k2", "en")),
    ));
    assert_eq!(pushkeys(&h, a), keys(&[("app", "k1"), ("app", "k2")]));
    assert!(pushkeys(&h, &bob).is_empty());

    // Another user with the same app id and pushkey: `append: true` keeps
    // alice's, the default (`append: false`) removes it.
    let mut appended = pusher("app", "k1", "en");
    appended["append"] = json!(true);
    ok(call(&h, "POST", "/pushers/set", &bob, Some(appended)));
    assert_eq!(pushkeys(&h, a), keys(&[("app", "k1"), ("app", "k2")]));
    ok(call(
        &h,
        "POST",
        "/pushers/set",
        &bob,
        Some(pusher("app", "k2", "en")),
    ));
    assert_eq!(pushkeys(&h, a), keys(&[("app", "k1")]));
    assert_eq!(pushkeys(&h, &bob), keys(&[("app", "k1"), ("app", "k2")]));

    // `kind: null` deletes (and deleting what is not there is fine).
    let del = json!({"kind": null, "app_id": "app", "pushkey": "k1"});
    ok(call(&h, "POST", "/pushers/set", a, Some(del.clone())));
    ok(call(&h, "POST", "/pushers/set", a, Some(del)));
    assert!(pushkeys(&h, a).is_empty());
    assert_eq!(pushkeys(&h, &bob).len(), 2);

    // Refused bodies.
    let mut no_lang = pusher("app", "k3", "en");
    no_lang.as_object_mut().unwrap().remove("lang");
    let mut bad_url = pusher("app", "k3", "en");
    bad_url["data"]["url"] = json!("https://push.example/somewhere");
    let mut email = pusher("m.email", "a@example.org", "en");
    email["kind"] = json!("email");
    for (body, status, code) in [
        (no_lang, 400, "M_MISSING_PARAM"),
        (
            json!({"app_id": "app", "pushkey": "k"}),
            400,
            "M_MISSING_PARAM",
        ),
        (bad_url, 400, "M_INVALID_PARAM"),
        (email, 400, "M_INVALID_PARAM"),
        (
            json!({"kind": "http", "app_id": 1, "pushkey": "k"}),
            400,
            "M_BAD_JSON",
        ),
    ] {
        let r = call(&h, "POST", "/pushers/set", a, Some(body));
        assert_err(&r, status, code);
    }
    let r = common::request(&h, "POST", &format!("{V3}/pushers/set"), Some(a), b"");
    assert_err(&r, 400, "M_NOT_JSON");
    assert!(pushkeys(&h, a).is_empty());

    // No rule is evaluated yet: nothing has notified.
    assert_eq!(
        ok(call(&h, "GET", "/notifications?limit=5", a, None)),
        json!({"notifications": []})
    );
}

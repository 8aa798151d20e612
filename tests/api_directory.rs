//! End-to-end: room aliases, canonical alias checks, join by alias, the
//! published room directory and `/publicRooms` paging, and profile changes
//! reaching member events, over HTTP against the real binary (2 shards)
//! and real PostgreSQL.

mod common;

use std::collections::HashSet;

use common::{assert_err, call, enc, json_request, ok, register, request, Hearth, Opts, Resp, V3};
use hearth::db::testing::TestCluster;
use serde_json::{json, Value};

fn start() -> (Hearth, hearth::db::testing::TestDb) {
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    (h, db)
}

/// Path segment for an alias or id (`#` and `:` percent-encoded).
fn create(h: &Hearth, token: &str, body: Value) -> String {
    ok(call(h, "POST", "/createRoom", token, Some(body)))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn alias_path(a: &str) -> String {
    format!("/directory/room/{}", enc(a))
}

fn joined_rooms(h: &Hearth, token: &str) -> Vec<String> {
    serde_json::from_value(ok(call(h, "GET", "/joined_rooms", token, None))["joined_rooms"].clone())
        .unwrap()
}

#[test]
fn aliases_end_to_end() {
    let (h, _db) = start();
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");

    // createRoom with room_alias_name: alias and canonical alias.
    let room = create(
        &h,
        &alice,
        json!({"preset": "public_chat", "room_alias_name": "lobby"}),
    );
    let got = ok(call(&h, "GET", &alias_path("#lobby:localhost"), &bob, None));
    assert_eq!(got, json!({"room_id": room, "servers": ["localhost"]}));
    let canonical = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/state/m.room.canonical_alias/"),
        &alice,
        None,
    ));
    assert_eq!(canonical, json!({"alias": "#lobby:localhost"}));
    // GET needs no auth (spec).
    let r = json_request(
        &h,
        "GET",
        &format!("{V3}{}", alias_path("#lobby:localhost")),
        None,
        None,
    );
    assert_eq!(ok(r)["room_id"], room);

    // Taken alias in createRoom: 400 M_ROOM_IN_USE and no room created.
    let r = call(
        &h,
        "POST",
        "/createRoom",
        &alice,
        Some(json!({"room_alias_name": "lobby"})),
    );
    assert_err(&r, 400, "M_ROOM_IN_USE");
    assert_eq!(joined_rooms(&h, &alice), vec![room.clone()]);
    for bad in ["bad name", "a:b", ""] {
        let r = call(
            &h,
            "POST",
            "/createRoom",
            &alice,
            Some(json!({"room_alias_name": bad})),
        );
        assert_err(&r, 400, "M_INVALID_PARAM");
    }
    assert_eq!(joined_rooms(&h, &alice), vec![room.clone()]);

    // PUT: created, then taken (409 M_UNKNOWN, spec), by a non-member 403.
    let put =
        |a: &str, token: &str, body: Value| call(&h, "PUT", &alias_path(a), token, Some(body));
    ok(put("#second:localhost", &alice, json!({"room_id": room})));
    assert_err(
        &put("#second:localhost", &alice, json!({"room_id": room})),
        409,
        "M_UNKNOWN",
    );
    assert_err(
        &put("#bobs:localhost", &bob, json!({"room_id": room})),
        403,
        "M_FORBIDDEN",
    );
    // Foreign server (Synapse: 400 M_UNKNOWN), bad syntax (400 M_INVALID_PARAM).
    assert_err(
        &put("#x:elsewhere.org", &alice, json!({"room_id": room})),
        400,
        "M_UNKNOWN",
    );
    for bad in [
        "nohash:localhost",
        "#noserver",
        "#a b:localhost",
        "#:localhost",
    ] {
        assert_err(
            &put(bad, &alice, json!({"room_id": room})),
            400,
            "M_INVALID_PARAM",
        );
    }
    // Bad bodies.
    let r = request(
        &h,
        "PUT",
        &format!("{V3}{}", alias_path("#third:localhost")),
        Some(&alice),
        b"{not json",
    );
    assert_err(&r, 400, "M_NOT_JSON");
    assert_err(
        &put("#third:localhost", &alice, json!({"room_id": 3})),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &put("#third:localhost", &alice, json!({})),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &put("#third:localhost", &alice, json!({"room_id": "nope"})),
        400,
        "M_INVALID_PARAM",
    );
    // Unauthenticated.
    let r = json_request(
        &h,
        "PUT",
        &format!("{V3}{}", alias_path("#third:localhost")),
        None,
        Some(&json!({"room_id": room})),
    );
    assert_err(&r, 401, "M_MISSING_TOKEN");

    // GET: unknown, foreign (no federation), bad syntax.
    assert_err(
        &call(&h, "GET", &alias_path("#nope:localhost"), &bob, None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(&h, "GET", &alias_path("#a:elsewhere.org"), &bob, None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(&h, "GET", &alias_path("nohash"), &bob, None),
        400,
        "M_INVALID_PARAM",
    );

    // Local aliases of a room: members only.
    let aliases = |token: &str| call(&h, "GET", &format!("/rooms/{room}/aliases"), token, None);
    assert_eq!(
        ok(aliases(&alice))["aliases"],
        json!(["#lobby:localhost", "#second:localhost"])
    );
    assert_err(&aliases(&bob), 403, "M_FORBIDDEN");
    assert_err(
        &call(&h, "GET", "/rooms/!unknown:localhost/aliases", &alice, None),
        403,
        "M_FORBIDDEN",
    );

    // Join by alias.
    let joined = ok(call(
        &h,
        "POST",
        &format!("/join/{}", enc("#second:localhost")),
        &bob,
        Some(json!({})),
    ));
    assert_eq!(joined["room_id"], room);
    assert!(joined_rooms(&h, &bob).contains(&room));
    assert_err(
        &call(
            &h,
            "POST",
            &format!("/join/{}", enc("#nope:localhost")),
            &bob,
            Some(json!({})),
        ),
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &call(
            &h,
            "POST",
            &format!("/join/{}", enc("#bad alias:localhost")),
            &bob,
            Some(json!({})),
        ),
        400,
        "M_INVALID_PARAM",
    );
    assert_eq!(ok(aliases(&bob))["aliases"].as_array().unwrap().len(), 2);

    // DELETE: bob (power 0, not the creator) may not; the creator may.
    let del = |a: &str, token: &str| call(&h, "DELETE", &alias_path(a), token, None);
    assert_err(&del("#lobby:localhost", &bob), 403, "M_FORBIDDEN");
    ok(put("#bobs:localhost", &bob, json!({"room_id": room})));
    ok(del("#bobs:localhost", &bob));
    // Alice is not its creator but has the power to send canonical_alias.
    ok(put("#bobs2:localhost", &bob, json!({"room_id": room})));
    ok(del("#bobs2:localhost", &alice));
    assert_err(
        &call(&h, "GET", &alias_path("#bobs2:localhost"), &bob, None),
        404,
        "M_NOT_FOUND",
    );
    assert_err(&del("#bobs2:localhost", &alice), 404, "M_NOT_FOUND");
    assert_err(&del("#x:elsewhere.org", &alice), 400, "M_UNKNOWN");
    assert_err(&del("bad", &alice), 400, "M_INVALID_PARAM");

    // m.room.canonical_alias: aliases must exist and point here.
    let other = create(&h, &alice, json!({"room_alias_name": "other"}));
    let set_canonical = |token: &str, content: Value| {
        call(
            &h,
            "PUT",
            &format!("/rooms/{room}/state/m.room.canonical_alias/"),
            token,
            Some(content),
        )
    };
    assert_err(
        &set_canonical(&alice, json!({"alias": "#nope:localhost"})),
        400,
        "M_BAD_ALIAS",
    );
    assert_err(
        &set_canonical(&alice, json!({"alias": "#x:elsewhere.org"})),
        400,
        "M_BAD_ALIAS",
    );
    assert_err(
        &set_canonical(&alice, json!({"alt_aliases": ["#other:localhost"]})),
        400,
        "M_BAD_ALIAS",
    );
    assert_err(
        &set_canonical(&alice, json!({"alias": "bad"})),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &set_canonical(&alice, json!({"alt_aliases": "#second:localhost"})),
        400,
        "M_INVALID_PARAM",
    );
    ok(set_canonical(
        &alice,
        json!({"alias": "#lobby:localhost", "alt_aliases": ["#second:localhost"]}),
    ));
    // Good aliases but too little power: the room's auth rules say no.
    assert_err(
        &set_canonical(&bob, json!({"alias": "#lobby:localhost"})),
        403,
        "M_FORBIDDEN",
    );
    // The other room's creation set its own canonical alias.
    let c = ok(call(
        &h,
        "GET",
        &format!("/rooms/{other}/state/m.room.canonical_alias/"),
        &alice,
        None,
    ));
    assert_eq!(c["alias"], "#other:localhost");

    // Deleting an alias drops it from the canonical alias event.
    ok(del("#second:localhost", &alice));
    let c = ok(call(
        &h,
        "GET",
        &format!("/rooms/{room}/state/m.room.canonical_alias/"),
        &alice,
        None,
    ));
    assert_eq!(c, json!({"alias": "#lobby:localhost"}));
    // An alias may be created again once deleted, for another room.
    ok(put("#second:localhost", &alice, json!({"room_id": other})));
    assert_eq!(
        ok(call(
            &h,
            "GET",
            &alias_path("#second:localhost"),
            &bob,
            None
        ))["room_id"],
        other
    );
}

fn visibility(h: &Hearth, token: &str, room: &str) -> Resp {
    call(
        h,
        "GET",
        &format!("/directory/list/room/{room}"),
        token,
        None,
    )
}

fn page(h: &Hearth, token: &str, query: &str) -> Value {
    ok(call(h, "GET", &format!("/publicRooms{query}"), token, None))
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["room_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn room_directory_and_public_rooms() {
    let (h, _db) = start();
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let carol = register(&h, "carol");

    // Seven listed rooms; bob joins the first three so counts differ.
    let mut listed = Vec::new();
    for i in 0..7 {
        let mut body = json!({
            "preset": "public_chat", "visibility": "public",
            "name": format!("Room {i}"), "topic": format!("topic number {i}"),
        });
        if i == 6 {
            body["creation_content"] = json!({"type": "m.space"});
            body["room_alias_name"] = json!("space");
        }
        let id = create(&h, &alice, body);
        if i < 3 {
            ok(call(
                &h,
                "POST",
                &format!("/join/{id}"),
                &bob,
                Some(json!({})),
            ));
        }
        listed.push(id);
    }
    // Not listed: private visibility; public visibility but invite-only.
    let private = create(
        &h,
        &alice,
        json!({"preset": "public_chat", "name": "Hidden"}),
    );
    let invite_only = create(
        &h,
        &alice,
        json!({"preset": "private_chat", "visibility": "public", "name": "Invite only"}),
    );

    // Visibility: GET needs no auth; unknown room is 404.
    assert_eq!(ok(visibility(&h, &bob, &listed[0]))["visibility"], "public");
    assert_eq!(ok(visibility(&h, &bob, &private))["visibility"], "private");
    let r = json_request(
        &h,
        "GET",
        &format!("{V3}/directory/list/room/{private}"),
        None,
        None,
    );
    assert_eq!(ok(r)["visibility"], "private");
    assert_err(&visibility(&h, &bob, "!nope:localhost"), 404, "M_NOT_FOUND");

    // PUT: bob is joined but has power 0; carol is not in the room.
    let put_vis = |token: &str, room: &str, body: Value| {
        call(
            &h,
            "PUT",
            &format!("/directory/list/room/{room}"),
            token,
            Some(body),
        )
    };
    assert_err(
        &put_vis(&bob, &listed[0], json!({"visibility": "private"})),
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &put_vis(&carol, &listed[0], json!({"visibility": "private"})),
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &put_vis(&alice, &listed[0], json!({"visibility": "secret"})),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &put_vis(&alice, &listed[0], json!({"visibility": 1})),
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &put_vis(&alice, "!nope:localhost", json!({"visibility": "public"})),
        404,
        "M_NOT_FOUND",
    );
    let r = request(
        &h,
        "PUT",
        &format!("{V3}/directory/list/room/{private}"),
        Some(&alice),
        b"nope",
    );
    assert_err(&r, 400, "M_NOT_JSON");
    // Round trip: publish the private room and unpublish it again.
    ok(put_vis(&alice, &private, json!({"visibility": "public"})));
    assert_eq!(ok(visibility(&h, &bob, &private))["visibility"], "public");
    assert_eq!(page(&h, &bob, "")["total_room_count_estimate"], 8);
    ok(put_vis(&alice, &private, json!({"visibility": "private"})));
    assert_eq!(ok(visibility(&h, &bob, &private))["visibility"], "private");

    // The whole listing: joined desc, then room id desc (Synapse's order).
    let all = page(&h, &bob, "");
    assert_eq!(all["total_room_count_estimate"], 7);
    assert!(all.get("next_batch").is_none() && all.get("prev_batch").is_none());
    let mut expected: Vec<(i64, String)> = listed
        .iter()
        .enumerate()
        .map(|(i, id)| (if i < 3 { 2 } else { 1 }, id.clone()))
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids(&all), expected);
    assert!(!ids(&all).contains(&private) && !ids(&all).contains(&invite_only));
    let space = all["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["room_id"] == listed[6].as_str())
        .unwrap()
        .clone();
    assert_eq!(
        space,
        json!({
            "room_id": listed[6], "name": "Room 6", "topic": "topic number 6",
            "canonical_alias": "#space:localhost", "num_joined_members": 1,
            "world_readable": false, "guest_can_join": false, "join_rule": "public",
            "room_type": "m.space",
        })
    );

    // Paging forward with limit 3: no gaps, no duplicates, same order.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let q = match &since {
            None => "?limit=3".to_owned(),
            Some(t) => format!("?limit=3&since={t}"),
        };
        let p = page(&h, &bob, &q);
        assert_eq!(p.get("prev_batch").is_some(), since.is_some(), "{p}");
        seen.extend(ids(&p));
        pages.push(p.clone());
        match p.get("next_batch") {
            Some(t) => since = Some(t.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
    // Tokens are stable: the same page again gives the same tokens.
    let again = page(&h, &bob, "?limit=3");
    assert_eq!(again["next_batch"], pages[0]["next_batch"]);
    // Backwards from page 2 gives page 1, whose next_batch leads to page 2.
    let back = page(
        &h,
        &bob,
        &format!(
            "?limit=3&since={}",
            pages[1]["prev_batch"].as_str().unwrap()
        ),
    );
    assert_eq!(ids(&back), ids(&pages[0]));
    assert!(back.get("prev_batch").is_none(), "{back}");
    let fwd = page(
        &h,
        &bob,
        &format!("?limit=3&since={}", back["next_batch"].as_str().unwrap()),
    );
    assert_eq!(ids(&fwd), ids(&pages[1]));

    // POST with the same paging, and filters.
    let post = |token: &str, body: Value| call(&h, "POST", "/publicRooms", token, Some(body));
    let p = ok(post(
        &bob,
        json!({"limit": 3, "include_all_networks": true}),
    ));
    assert_eq!(ids(&p), ids(&pages[0]));
    let p = ok(post(
        &bob,
        json!({"limit": 3, "since": pages[0]["next_batch"]}),
    ));
    assert_eq!(ids(&p), ids(&pages[1]));
    let p = ok(post(
        &bob,
        json!({"filter": {"generic_search_term": "ROOM 3"}}),
    ));
    assert_eq!(ids(&p), vec![listed[3].clone()]);
    let p = ok(post(
        &bob,
        json!({"filter": {"generic_search_term": "number 5"}}),
    ));
    assert_eq!(ids(&p), vec![listed[5].clone()]);
    let p = ok(post(
        &bob,
        json!({"filter": {"generic_search_term": "#space"}}),
    ));
    assert_eq!(ids(&p), vec![listed[6].clone()]);
    let p = ok(post(
        &bob,
        json!({"filter": {"generic_search_term": "no such room"}}),
    ));
    assert!(ids(&p).is_empty());
    assert_eq!(p["total_room_count_estimate"], 7);
    let p = ok(post(&bob, json!({"filter": {"room_types": ["m.space"]}})));
    assert_eq!(ids(&p), vec![listed[6].clone()]);
    let p = ok(post(&bob, json!({"filter": {"room_types": [null]}})));
    assert_eq!(ids(&p).len(), 6);
    assert!(!ids(&p).contains(&listed[6]));
    let p = ok(post(
        &bob,
        json!({"filter": {"room_types": [null, "m.space"]}}),
    ));
    assert_eq!(ids(&p).len(), 7);

    // GET needs no token; POST does.
    let r = json_request(&h, "GET", &format!("{V3}/publicRooms?limit=2"), None, None);
    assert_eq!(ids(&ok(r)).len(), 2);
    let r = json_request(
        &h,
        "POST",
        &format!("{V3}/publicRooms"),
        None,
        Some(&json!({})),
    );
    assert_err(&r, 401, "M_MISSING_TOKEN");

    // Failure cases.
    for q in [
        "?since=garbage",
        "?limit=-1",
        "?limit=x",
        "?server=elsewhere.org",
    ] {
        assert_err(
            &call(&h, "GET", &format!("/publicRooms{q}"), &bob, None),
            400,
            "M_INVALID_PARAM",
        );
    }
    assert_err(
        &post(&bob, json!({"since": "garbage"})),
        400,
        "M_INVALID_PARAM",
    );
    assert_err(&post(&bob, json!({"limit": "three"})), 400, "M_BAD_JSON");
    assert_err(
        &post(&bob, json!({"filter": {"room_types": "m.space"}})),
        400,
        "M_BAD_JSON",
    );
    let r = request(&h, "POST", &format!("{V3}/publicRooms"), Some(&bob), b"[");
    assert_err(&r, 400, "M_NOT_JSON");
}

fn member(h: &Hearth, token: &str, room: &str, user: &str) -> Value {
    ok(call(
        h,
        "GET",
        &format!("/rooms/{room}/state/m.room.member/{user}"),
        token,
        None,
    ))
}

#[test]
fn profile_changes_reach_member_events_on_both_shards() {
    let (h, _db) = start();
    let alice = register(&h, "alice");
    let bob = register(&h, "bob");
    let carol = register(&h, "carol");
    let me = "@alice:localhost";

    // Rooms until both shards own one.
    let mut by_shard: [Option<String>; 2] = [None, None];
    for _ in 0..64 {
        if by_shard.iter().all(Option::is_some) {
            break;
        }
        let id = create(&h, &alice, json!({"preset": "public_chat"}));
        let rid = ruma::RoomId::parse(&id).unwrap();
        let shard = hearth::mesh::shard_for_room(&rid, 2);
        by_shard[shard].get_or_insert(id);
    }
    let rooms: Vec<String> = by_shard
        .into_iter()
        .map(|r| r.expect("a room per shard"))
        .collect();
    // A room alice left is not touched.
    let left = create(&h, &alice, json!({"preset": "public_chat"}));
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{left}/join"),
        &bob,
        Some(json!({})),
    ));
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{left}/leave"),
        &alice,
        Some(json!({})),
    ));

    ok(call(
        &h,
        "PUT",
        &format!("/profile/{me}/displayname"),
        &alice,
        Some(json!({"displayname": "Alice A"})),
    ));
    for room in &rooms {
        let m = member(&h, &alice, room, me);
        assert_eq!(m, json!({"membership": "join", "displayname": "Alice A"}));
    }
    ok(call(
        &h,
        "PUT",
        &format!("/profile/{me}/avatar_url"),
        &alice,
        Some(json!({"avatar_url": "mxc://localhost/alice"})),
    ));
    for room in &rooms {
        let m = member(&h, &alice, room, me);
        assert_eq!(
            m,
            json!({"membership": "join", "displayname": "Alice A",
                   "avatar_url": "mxc://localhost/alice"})
        );
    }
    let m = member(&h, &bob, &left, me);
    assert_eq!(m, json!({"membership": "leave"}));

    // Same value again: no new event (the member event id stays).
    let before = ok(call(
        &h,
        "GET",
        &format!("/rooms/{}/state", rooms[0]),
        &alice,
        None,
    ));
    ok(call(
        &h,
        "PUT",
        &format!("/profile/{me}/displayname"),
        &alice,
        Some(json!({"displayname": "Alice A"})),
    ));
    let after = ok(call(
        &h,
        "GET",
        &format!("/rooms/{}/state", rooms[0]),
        &alice,
        None,
    ));
    // (Compare ids: `unsigned.age` is computed at serve time.)
    let ids = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].clone())
            .collect()
    };
    assert_eq!(ids(&before), ids(&after));
    // Clearing the name removes the key.
    ok(call(
        &h,
        "PUT",
        &format!("/profile/{me}/displayname"),
        &alice,
        Some(json!({"displayname": null})),
    ));
    assert_eq!(
        member(&h, &alice, &rooms[1], me),
        json!({"membership": "join", "avatar_url": "mxc://localhost/alice"})
    );

    // Joins and invites carry the target's current profile (as Synapse).
    ok(call(
        &h,
        "PUT",
        "/profile/@bob:localhost/displayname",
        &bob,
        Some(json!({"displayname": "Bobby"})),
    ));
    ok(call(
        &h,
        "POST",
        &format!("/join/{}", rooms[0]),
        &bob,
        Some(json!({})),
    ));
    assert_eq!(
        member(&h, &alice, &rooms[0], "@bob:localhost"),
        json!({"membership": "join", "displayname": "Bobby"})
    );
    ok(call(
        &h,
        "PUT",
        "/profile/@carol:localhost/displayname",
        &carol,
        Some(json!({"displayname": "Caroline"})),
    ));
    ok(call(
        &h,
        "POST",
        &format!("/rooms/{}/invite", rooms[1]),
        &alice,
        Some(json!({"user_id": "@carol:localhost"})),
    ));
    assert_eq!(
        member(&h, &alice, &rooms[1], "@carol:localhost"),
        json!({"membership": "invite", "displayname": "Caroline"})
    );
    // createRoom: the creator's join carries the profile too.
    let fresh = create(&h, &bob, json!({"preset": "private_chat"}));
    assert_eq!(
        member(&h, &bob, &fresh, "@bob:localhost"),
        json!({"membership": "join", "displayname": "Bobby"})
    );
}

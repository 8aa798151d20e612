//! End-to-end encryption key endpoints (client-server API "End-to-End
//! Encryption" → "Key management API"): `/keys/upload`, `/keys/query`,
//! `/keys/claim`; thin handlers over `crate::keys`.
//!
//! Uploads run on the user's shard. Claims run where they arrive: the
//! claim statement is atomic in PostgreSQL, so several shards claiming
//! the same device's keys at once still hand each key out once. Every key
//! change pokes the owner's stream so their next `/sync` is computed (the
//! cheap path carries no key counts, see `sync::response`).

use std::collections::BTreeMap;
use std::rc::Rc;

use futures_util::future::join_all;
use ruma::UserId;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::keys::cross_signing::{self, KeyType};
use crate::keys::store::{self, UploadKey};
use crate::keys::{cross_store, remote, validate, KeysError};
use crate::mesh::shard_for_user;
use crate::primitives::unix_ms_i64 as now_ms;
use crate::shard_state::{on_shard, Here, ShardState};
use crate::stream::{Change, Pos, StreamToken, Ticket, UserChange};

/// Registers this module's client routes (v3 and r0).
pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::Post;
    let r = super::client(r, Post, "/keys/upload", upload);
    let r = super::client(r, Post, "/keys/query", query);
    let r = super::client(r, Method::Get, "/keys/changes", changes);
    super::client(r, Post, "/keys/claim", claim)
}

pub(crate) fn keys_error(e: KeysError) -> MatrixError {
    match e {
        KeysError::InvalidParam(m) => MatrixError::invalid_param(m),
        KeysError::MissingParam(m) => MatrixError::missing_param(m),
        KeysError::InvalidSignature(m) => MatrixError::new(400, "M_INVALID_SIGNATURE", m),
        KeysError::Forbidden(m) => MatrixError::forbidden(m),
        KeysError::NotFound(m) => MatrixError::not_found(m),
        KeysError::Unsupported(m) => MatrixError::new(400, "M_UNRECOGNIZED", m),
        KeysError::WrongBackupVersion(current) => {
            MatrixError::new(403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version.")
                .with_field("current_version", current)
        }
        KeysError::Db(e) => MatrixError::from(e),
    }
}

/// Wakes `user`'s syncs: their key counts changed. Returns the ephemeral
/// position to wait for (see [`announced`]).
fn poke(state: &ShardState, user: &UserId) -> i64 {
    let user = user.to_owned();
    state.stream.publish_ephemeral(move |pos| {
        vec![Change::User {
            user_id: user,
            pos: Pos::Ephemeral(pos),
            what: UserChange::Poke,
        }]
    })
}

/// Waits until the poke at `pos` reached every shard: answering before
/// would let the user's next sync take the cheap path and miss the change.
async fn announced(state: &ShardState, pos: i64) {
    state.stream.wait_ephemeral(pos).await;
}

/// Announces a committed key change of `user` at `ticket`'s position. A
/// device list change (`device_list`) concerns everyone sharing a joined
/// room (their `device_lists.changed`); other changes only `user`. Runs
/// on the user's shard; returns once every shard applied it.
pub(super) async fn announce(st: &ShardState, ticket: Ticket, user: &UserId, device_list: bool) {
    let pos = ticket.pos();
    let mut woken = vec![user.to_owned()];
    if device_list {
        // Already committed: on error, announce to `user` only.
        let peers = store::room_peers(&st.db, user.as_str())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "device list change: room peers unknown");
                Vec::new()
            });
        woken.extend(
            peers
                .iter()
                .filter_map(|p| UserId::parse(p.as_str()).ok())
                .filter(|p| p != user),
        );
    }
    let changes = woken
        .into_iter()
        .map(|user_id| Change::User {
            user_id,
            pos: Pos::Persisted(pos),
            what: UserChange::Poke,
        })
        .collect();
    ticket.publish(changes).await;
}

/// Records and announces that `user`'s device list changed after
/// `devices` were deleted or logged out (their keys went with them, by
/// cascade, and the signatures of them are forgotten): room peers see the
/// user in `device_lists.changed` and query again; other servers get an
/// `m.device_list_update` (`deleted`) per device. Call on the user's
/// shard, after the deletion committed.
pub(crate) async fn devices_removed(st: &ShardState, user: &UserId, devices: Vec<String>) {
    devices_changed(st, user, devices).await;
    let ticket = st.stream.allocate();
    let Ok(shard) = i32::try_from(st.stream.shard()) else {
        return;
    };
    if let Err(e) = cross_store::forget_device_signatures(&st.db, user.as_str()).await {
        tracing::warn!(error = %e, %user, "signatures of removed devices not forgotten");
    }
    if let Err(e) = store::record_change(&st.db, user.as_str(), shard, ticket.pos()).await {
        tracing::warn!(error = %e, %user, "device list change not recorded");
        return; // the ticket's drop leaves a gap
    }
    announce(st, ticket, user, true).await;
}

/// Tells the other servers sharing a room with `user` that `devices`
/// changed (created, renamed or deleted). Logged, not failed: the change
/// itself is committed already.
pub(super) async fn devices_changed(st: &ShardState, user: &UserId, devices: Vec<String>) {
    let devices: Vec<(String, Option<Value>)> = devices.into_iter().map(|d| (d, None)).collect();
    if let Err(e) = crate::keys::device_lists::announce_devices(
        &st.db,
        user.as_str(),
        &devices,
        &st.config.server_name,
    )
    .await
    {
        tracing::warn!(error = %e, %user, "device list update not queued for other servers");
    }
}

/// `one_time_keys` / `fallback_keys` of an upload, checked.
fn parse_keys(body: &Map<String, Value>, field: &str) -> Result<Vec<UploadKey>, MatrixError> {
    let Some(v) = body.get(field) else {
        return Ok(Vec::new());
    };
    let Some(map) = v.as_object() else {
        return Err(MatrixError::bad_json(format!(
            "'{field}' must be an object"
        )));
    };
    let mut out = Vec::with_capacity(map.len());
    for (id, key) in map {
        let (alg, key_id) = validate::split_key_id(id).map_err(keys_error)?;
        if !(key.is_object() || key.is_string()) {
            return Err(MatrixError::bad_json(format!(
                "key {id:?} must be an object or a string"
            )));
        }
        out.push(UploadKey {
            algorithm: alg.to_owned(),
            key_id: key_id.to_owned(),
            json: key.to_string(),
        });
    }
    Ok(out)
}

/// `POST /keys/upload`: device keys (the requester's, self-signed), one-time
/// and fallback keys; answers the one-time key counts.
async fn upload(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let device_keys = match body.get("device_keys") {
        None | Some(Value::Null) => None,
        Some(Value::Object(k)) => {
            validate::device_keys(k, me.user_id.as_str(), &me.device_id).map_err(keys_error)?;
            Some(Value::Object(k.clone()).to_string())
        }
        Some(_) => return Err(MatrixError::bad_json("'device_keys' must be an object")),
    };
    let one_time = parse_keys(&body, "one_time_keys")?;
    let mut fallback = parse_keys(&body, "fallback_keys")?;
    if fallback.is_empty() {
        // MSC2732's prefix, still sent by some clients.
        fallback = parse_keys(&body, "org.matrix.msc2732.fallback_keys")?;
    }
    let changed = device_keys.is_some();
    let target = shard_for_user(&me.user_id, state.mesh.n_shards());
    let counts = on_shard(&state.mesh, target, Here::Spawn, move |st| async move {
        let ticket = st.stream.allocate();
        let pos = ticket.pos();
        let shard = i32::try_from(st.stream.shard())
            .map_err(|_| MatrixError::unknown("shard id out of range"))?;
        let counts = store::upload(
            &st.db,
            &st.config.server_name,
            me.user_id.as_str(),
            &me.device_id,
            device_keys,
            &one_time,
            &fallback,
            now_ms(),
            (shard, pos),
        )
        .await
        .map_err(keys_error)?;
        announce(&st, ticket, &me.user_id, changed).await;
        Ok::<_, MatrixError>(counts)
    })
    .await??;
    Ok(Response::json(
        200,
        &json!({ "one_time_key_counts": counts }),
    ))
}

/// Users of a request body's `{user: x}` map, split into local ones and,
/// per server, the remote ones with what is asked of them (`x`).
pub(crate) fn split_local(
    state: &ShardState,
    wanted: &Map<String, Value>,
) -> (Vec<String>, remote::ByServer) {
    let mut local = Vec::new();
    let mut by_server = remote::ByServer::new();
    for (u, x) in wanted {
        match UserId::parse(u.as_str()) {
            Ok(id) if id.server_name().as_str() == state.config.server_name => {
                local.push(u.clone())
            }
            Ok(id) => {
                by_server
                    .entry(id.server_name().to_string())
                    .or_default()
                    .insert(u.clone(), x.clone());
            }
            Err(_) => {} // not a user id: no keys, no failure
        }
    }
    (local, by_server)
}

/// `POST /keys/query`: device keys of local users, with
/// `unsigned.device_display_name` and the signatures uploaded since;
/// their master and self-signing keys, and the requester's own
/// user-signing key. Remote users' servers are asked at the same time
/// (`keys::remote`); those that fail are in `failures`.
async fn query(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let Some(Value::Object(wanted)) = body.get("device_keys") else {
        return Err(MatrixError::bad_json("'device_keys' must be an object"));
    };
    let (local, mut by_server) = split_local(&state, wanted);
    let from_cache = cached_remote(&state, &mut by_server).await;
    let (answer, remote) = futures_util::future::join(
        query_local(&state, wanted, local, Some(me.user_id.as_str())),
        remote::query(&state.federation, &by_server, remote::timeout_of(&body)),
    )
    .await;
    let mut answer = answer?;
    for (field, users) in from_cache {
        if let Some(Value::Object(into)) = answer.get_mut(field) {
            into.extend(users);
        }
    }
    for (field, users) in remote.fields {
        if let Some(Value::Object(into)) = answer.get_mut(field) {
            into.extend(users);
        }
    }
    answer.insert("failures".into(), Value::Object(remote.failures));
    Ok(Response::json(200, &Value::Object(answer)))
}

/// The remote users of a query whose device lists we track and hold up
/// to date (`federation::device_lists::cached`), answered from that
/// cache and taken out of `by_server`: `field -> {user: ...}`. On a
/// database error everyone is asked of their server.
async fn cached_remote(
    state: &ShardState,
    by_server: &mut remote::ByServer,
) -> BTreeMap<&'static str, Map<String, Value>> {
    let users: Vec<String> = by_server.values().flat_map(|m| m.keys().cloned()).collect();
    let mut out: BTreeMap<&'static str, Map<String, Value>> = BTreeMap::new();
    let found =
        match crate::federation::device_lists::cached(&state.db, &state.config.server_name, &users)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cached remote device lists unreadable");
                return out;
            }
        };
    for users in by_server.values_mut() {
        users.retain(|user, asked| {
            let Some(c) = found.get(user) else {
                return true;
            };
            let wanted: Vec<&str> = asked
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let devices: Map<String, Value> = c
                .devices
                .iter()
                .filter(|(d, _)| wanted.is_empty() || wanted.contains(&d.as_str()))
                .map(|(d, k)| (d.clone(), k.clone()))
                .collect();
            out.entry("device_keys")
                .or_default()
                .insert(user.clone(), Value::Object(devices));
            if let Some(m) = &c.master {
                out.entry("master_keys")
                    .or_default()
                    .insert(user.clone(), m.clone());
            }
            if let Some(s) = &c.self_signing {
                out.entry("self_signing_keys")
                    .or_default()
                    .insert(user.clone(), s.clone());
            }
            false
        });
    }
    by_server.retain(|_, users| !users.is_empty());
    out
}

/// The keys of the `local` users of a `device_keys` query: `device_keys`,
/// `master_keys`, `self_signing_keys`, and with `me` (a local requester)
/// their own `user_signing_keys` and their signatures. Shared by
/// `/keys/query` and federation's `/user/keys/query` (`me = None`).
pub(crate) async fn query_local(
    state: &ShardState,
    wanted: &Map<String, Value>,
    local: Vec<String>,
    me: Option<&str>,
) -> Result<Map<String, Value>, MatrixError> {
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in &local {
        let devices = match wanted.get(u) {
            Some(Value::Array(d)) => d
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(MatrixError::bad_json("device lists must be arrays")),
        };
        want.insert(u.clone(), devices);
    }
    // Without a local requester, only signatures everyone may see (a
    // user's own user-signing key's are for that user: an id no one has).
    let me = me.unwrap_or("");
    let (found, cross, sigs) = futures_util::future::join3(
        store::device_keys(&state.db, &local),
        cross_store::keys_of(&state.db, &local),
        cross_store::signatures_for(&state.db, &local, me),
    )
    .await;
    let (cross, sigs) = (cross.map_err(keys_error)?, sigs.map_err(keys_error)?);
    let mut found = found.map_err(keys_error)?;
    for d in &mut found {
        if let (Some(obj), Some(s)) = (
            d.keys.as_object_mut(),
            sigs.get(&(d.user_id.clone(), d.device_id.clone())),
        ) {
            cross_signing::merge_signatures(obj, s);
        }
    }
    let mut answer = Map::new();
    answer.insert(
        "device_keys".into(),
        Value::Object(store::query_answer(found, &want)),
    );
    for kind in KeyType::ALL {
        let mut of_kind = Map::new();
        for (user, keys) in &cross {
            // Spec: user-signing keys only of the requester's own user.
            if kind == KeyType::UserSigning && (user != me || me.is_empty()) {
                continue;
            }
            if let Some(k) = keys.iter().find(|k| k.kind == kind) {
                let mut json = k.json.clone();
                if let Some(s) = sigs.get(&(user.clone(), k.public.clone())) {
                    cross_signing::merge_signatures(&mut json, s);
                }
                of_kind.insert(user.clone(), Value::Object(json));
            }
        }
        if kind == KeyType::UserSigning && me.is_empty() {
            continue;
        }
        answer.insert(kind.query_field().into(), Value::Object(of_kind));
    }
    Ok(answer)
}

/// `POST /keys/claim`: one key per requested device, each handed out once;
/// remote users' keys are claimed from their servers at the same time.
async fn claim(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let Some(Value::Object(wanted)) = body.get("one_time_keys") else {
        return Err(MatrixError::bad_json("'one_time_keys' must be an object"));
    };
    let (local, by_server) = split_local(&state, wanted);
    let (out, remote) = futures_util::future::join(
        claim_local(&state, wanted, &local),
        remote::claim(&state.federation, &by_server, remote::timeout_of(&body)),
    )
    .await;
    let mut out = out?;
    if let Some(users) = remote.fields.into_values().next() {
        out.extend(users);
    }
    Ok(Response::json(
        200,
        &json!({ "one_time_keys": out, "failures": remote.failures }),
    ))
}

/// Claims one key per requested device of the `local` users (`{user:
/// {device: {alg:id: key}}}`); shared by `/keys/claim` and federation's
/// `/user/keys/claim`.
pub(crate) async fn claim_local(
    state: &ShardState,
    wanted: &Map<String, Value>,
    local: &[String],
) -> Result<Map<String, Value>, MatrixError> {
    let mut asks = Vec::new();
    for u in local {
        let Some(Value::Object(devices)) = wanted.get(u) else {
            return Err(MatrixError::bad_json(
                "each user must map devices to algorithms",
            ));
        };
        for (device, alg) in devices {
            let Some(alg) = alg.as_str() else {
                return Err(MatrixError::bad_json("algorithms must be strings"));
            };
            asks.push((u.as_str(), device.as_str(), alg));
        }
    }
    let claims = asks.iter().map(|&(u, d, a)| {
        let db = state.db.clone();
        async move { store::claim(&db, u, d, a).await.map(|k| (u, d, k)) }
    });
    let mut out: Map<String, Value> = Map::new();
    let mut last_poke = None;
    let mut failed = None;
    for r in join_all(claims).await {
        // Every committed claim is announced, even when another failed:
        // the owner's key counts (and `sync::key_counts`) depend on it.
        let (user, device, key) = match r {
            Ok(claimed) => claimed,
            Err(e) => {
                failed.get_or_insert(e);
                continue;
            }
        };
        let Some((id, key)) = key else { continue };
        if let Ok(uid) = UserId::parse(user) {
            last_poke = Some(poke(state, &uid));
        }
        let devices = out
            .entry(user.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = devices.as_object_mut() {
            let mut one = Map::new();
            one.insert(id, key);
            m.insert(device.to_owned(), Value::Object(one));
        }
    }
    if let Some(pos) = last_poke {
        announced(state, pos).await;
    }
    match failed {
        Some(e) => Err(keys_error(e)),
        None => Ok(out),
    }
}

/// `GET /keys/changes?from=&to=`: users (sharing a room with the requester)
/// whose keys changed or who newly share a room between two sync tokens,
/// and in `left` those who share none any more.
async fn changes(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let token = |name: &str| -> Result<StreamToken, MatrixError> {
        let Some(v) = req.query_param(name) else {
            return Err(MatrixError::missing_param(format!("'{name}' is required")));
        };
        StreamToken::parse(&v)
            .map_err(|_| MatrixError::invalid_param(format!("'{name}' is not a sync token")))
    };
    let (from, to) = (token("from")?, token("to")?);
    let n = state.mesh.n_shards();
    let (from, to) = (from.persisted_vec(n), to.persisted_vec(n));
    let user = me.user_id.as_str();
    let (changed, left) = store::device_list_changes(&state.db, &state.notifier, user, &from, &to)
        .await
        .map_err(keys_error)?;
    Ok(Response::json(
        200,
        &json!({ "changed": changed, "left": left }),
    ))
}

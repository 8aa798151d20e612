//! Cross-signing endpoints (client-server API "End-to-End Encryption" →
//! "Cross-signing"): `POST /keys/device_signing/upload` and `POST
//! /keys/signatures/upload`; thin handlers over `crate::keys`.
//!
//! Writes run on the user's shard under a lock, so "is there a master key
//! yet" (which decides whether UIA is needed) and the write cannot be
//! raced by another upload of the same user.

use std::rc::Rc;

use futures_util::lock::Mutex;
use ruma::UserId;
use serde_json::{json, Map, Value};

use super::keys::{announce, keys_error};
use super::uia::{self, Outcome, Uia};
use crate::auth;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::keys::cross_signing::{self, CrossKey, KeyType, SignerView};
use crate::keys::{cross_store, device_lists};
use crate::mesh::shard_for_user;
use crate::primitives::unix_ms_i64 as now_ms;
use crate::shard_state::{on_shard, Here, ShardState};

/// Registers this module's client routes (v3 and r0).
pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    let r = super::client(
        r,
        Method::Post,
        "/keys/device_signing/upload",
        upload_signing_keys,
    );
    super::client(
        r,
        Method::Post,
        "/keys/signatures/upload",
        upload_signatures,
    )
}

thread_local! {
    /// Serialises cross-signing writes on this shard (rare; see the module doc).
    static WRITE_LOCK: Rc<Mutex<()>> = Rc::new(Mutex::new(()));
}

async fn stored_keys(st: &ShardState, user: &str) -> Result<Vec<CrossKey>, MatrixError> {
    let mut all = cross_store::keys_of(&st.db, &[user.to_owned()])
        .await
        .map_err(keys_error)?;
    Ok(all.remove(user).unwrap_or_default())
}

fn master(keys: &[CrossKey]) -> Option<&CrossKey> {
    keys.iter().find(|k| k.kind == KeyType::Master)
}

/// `POST /keys/device_signing/upload`. UIA (`m.login.password`) unless the
/// user has no master key yet, or the upload repeats the stored keys (spec
/// v1.11+, as Synapse: a first upload needs none, a retried one succeeds).
async fn upload_signing_keys(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let user = me.user_id.as_str();
    let mut given = Vec::new();
    for kind in KeyType::ALL {
        match body.get(kind.upload_field()) {
            None | Some(Value::Null) => {}
            Some(v) => given.push(cross_signing::parse_key(v, user, kind).map_err(keys_error)?),
        }
    }
    let stored = stored_keys(&state, user).await?;
    if master(&stored).is_some() && cross_signing::is_replay(&given, &stored) {
        return Ok(Response::json(200, &json!({})));
    }
    // Checked before UIA, so a bad upload does not use up a UIA session.
    let keys = cross_signing::check_upload(user, given, master(&stored)).map_err(keys_error)?;
    let publics: Vec<&str> = keys.iter().map(|k| k.public.as_str()).collect();
    if cross_store::clashes_with_device(&state.db, user, &publics)
        .await
        .map_err(keys_error)?
    {
        return Err(MatrixError::forbidden("Key ID in use"));
    }
    let mut authenticated = false;
    if master(&stored).is_some() {
        let flow = Uia {
            flows: vec![vec![uia::PASSWORD]],
            uri: &req.path,
            user: Some(&me.user_id),
            registration_token: None,
        };
        if let Outcome::Challenge(resp) = flow.check(&state, body.get("auth")).await? {
            return Ok(resp);
        }
        authenticated = true;
    }
    if keys.is_empty() {
        return Ok(Response::json(200, &json!({})));
    }
    let target = shard_for_user(&me.user_id, state.mesh.n_shards());
    let user_id = me.user_id.clone();
    on_shard(&state.mesh, target, Here::Spawn, move |st| async move {
        let lock = WRITE_LOCK.with(Rc::clone);
        let _held = lock.lock().await;
        let user = user_id.as_str();
        // A master key stored meanwhile by another upload: this one was
        // let through without UIA, it must start over.
        if !authenticated && master(&stored_keys(&st, user).await?).is_some() {
            return Err(MatrixError::forbidden(
                "cross-signing keys were uploaded meanwhile; authenticate and retry",
            ));
        }
        let shard = i32::try_from(st.stream.shard())
            .map_err(|_| MatrixError::unknown("shard id out of range"))?;
        let ticket = st.stream.allocate();
        cross_store::store_keys(&st.db, user, &keys, now_ms(), (shard, ticket.pos()))
            .await
            .map_err(keys_error)?;
        announce(&st, ticket, &user_id, true).await;
        let of = |kind: KeyType| {
            keys.iter()
                .find(|k| k.kind == kind)
                .map(|k| Value::Object(k.json.clone()))
        };
        if let Err(e) = device_lists::announce_signing_keys(
            &st.db,
            user,
            of(KeyType::Master),
            of(KeyType::SelfSigning),
            &st.config.server_name,
        )
        .await
        {
            tracing::warn!(error = %e, %user, "signing key update not queued for other servers");
        }
        Ok(())
    })
    .await
    .map_err(|e| MatrixError::unknown(e.to_string()))??;
    Ok(Response::json(200, &json!({})))
}

/// `POST /keys/signatures/upload`: each signed object is checked against
/// the stored key and its new signatures verified; what fails is listed in
/// `failures`, the rest is stored and announced (the signer's own keys to
/// everyone sharing a room, another user's master key to the signer only).
async fn upload_signatures(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let target = shard_for_user(&me.user_id, state.mesh.n_shards());
    let user_id = me.user_id.clone();
    let failures = on_shard(&state.mesh, target, Here::Spawn, move |st| async move {
        let lock = WRITE_LOCK.with(Rc::clone);
        let _held = lock.lock().await;
        let me = user_id.as_str();
        let server = st.config.server_name.clone();
        let is_local =
            |u: &str| UserId::parse(u).is_ok_and(|id| id.server_name().as_str() == server.as_str());
        let others: Vec<String> = body
            .keys()
            .filter(|u| u.as_str() != me && is_local(u))
            .cloned()
            .collect();
        let (own, devices, masters) = futures_util::future::join3(
            stored_keys(&st, me),
            cross_store::device_keys_of(&st.db, me),
            cross_store::keys_of(&st.db, &others),
        )
        .await;
        let masters = masters
            .map_err(keys_error)?
            .into_iter()
            .filter_map(|(u, keys)| {
                let m = keys.into_iter().find(|k| k.kind == KeyType::Master)?;
                Some((u, m))
            })
            .collect();
        let view = SignerView {
            own: own?,
            devices: devices.map_err(keys_error)?,
            masters,
        };
        let (accepted, refused) = cross_signing::check_signatures(me, &body, &view, is_local);
        let failures = failures_json(refused);
        if !accepted.is_empty() {
            let shard = i32::try_from(st.stream.shard())
                .map_err(|_| MatrixError::unknown("shard id out of range"))?;
            let ticket = st.stream.allocate();
            cross_store::store_signatures(&st.db, me, &accepted, shard, ticket.pos())
                .await
                .map_err(keys_error)?;
            let own_changed = accepted.iter().any(|s| s.visible_to.is_none());
            announce(&st, ticket, &user_id, own_changed).await;
            if own_changed {
                let targets: Vec<String> = accepted
                    .iter()
                    .filter(|s| s.visible_to.is_none() && s.target_user == me)
                    .map(|s| s.target_key_id.clone())
                    .collect();
                signed_to_federation(&st, me, targets).await;
            }
        }
        Ok::<_, MatrixError>(failures)
    })
    .await
    .map_err(|e| MatrixError::unknown(e.to_string()))??;
    Ok(Response::json(200, &json!({ "failures": failures })))
}

/// Tells the other servers of `me`'s keys that gained signatures: a
/// device as an `m.device_list_update` with its keys and every signature,
/// the master key as an `m.signing_key_update`. Logged, not failed: the
/// signatures are committed already.
async fn signed_to_federation(st: &ShardState, me: &str, targets: Vec<String>) {
    let mut wanted = Map::new();
    wanted.insert(me.to_owned(), json!([]));
    let answer = match super::keys::query_local(st, &wanted, vec![me.to_owned()], Some(me)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = ?e, %me, "signed keys not read for other servers");
            return;
        }
    };
    let devices: Vec<(String, Option<Value>)> = answer
        .get("device_keys")
        .and_then(|d| d.get(me))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(id, _)| targets.contains(id))
        .map(|(id, keys)| {
            let mut keys = keys.clone();
            // The display name travels beside the keys, not in them.
            if let Some(o) = keys.as_object_mut() {
                o.remove("unsigned");
            }
            (id.clone(), Some(keys))
        })
        .collect();
    let master = answer
        .get("master_keys")
        .and_then(|m| m.get(me))
        .filter(|m| {
            m.get("keys").and_then(Value::as_object).is_some_and(|k| {
                k.keys()
                    .any(|id| targets.iter().any(|t| id.ends_with(t.as_str())))
            })
        })
        .cloned();
    let ours = &st.config.server_name;
    if let Err(e) = device_lists::announce_devices(&st.db, me, &devices, ours).await {
        tracing::warn!(error = %e, %me, "device list update not queued for other servers");
    }
    if let Err(e) = device_lists::announce_signing_keys(&st.db, me, master, None, ours).await {
        tracing::warn!(error = %e, %me, "signing key update not queued for other servers");
    }
}

/// The `failures` map of the answer: `{user: {key_id: {errcode, error}}}`.
fn failures_json(refused: Vec<cross_signing::Failure>) -> Map<String, Value> {
    let mut out = Map::new();
    for (user, key_id, why) in refused {
        let e = keys_error(why);
        let entry = out.entry(user).or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = entry.as_object_mut() {
            m.insert(key_id, json!({"errcode": e.errcode, "error": e.error}));
        }
    }
    out
}

//! Inbound transactions (server-server "Transactions", `PUT
//! /send/{txnId}`): what the origin is answered, and what is made durable
//! before it is.
//!
//! A transaction is checked on the shard that received it: per PDU its
//! room (unknown rooms are ignored, as Synapse does: the answer cannot name
//! an event id it cannot compute), the room's `m.room.server_acl`, format,
//! size, that its sender belongs to the origin, then signatures and content
//! hashes in bulk on the blocking pool ([`verify_pdus`]). The PDUs that
//! pass are staged in `federation_staging` together with the answer in one
//! group-commit write, and only then answered: a PDU accepted into a `200`
//! survives a crash before it is applied, and a retried transaction gets
//! the stored answer. Applying them (auth, state, missing events) is the
//! room owner's job, per room, after the answer (`federation::ingest`), so
//! one room's backlog never holds up a transaction or another room.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use ruma::canonical_json::{self, CanonicalJsonObject};
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, Verified};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{json, Map, Value};

use crate::db::{SqlValue, Write};
use crate::events::{event_id_of, redact, verify_pdu, RoomVersion};
use crate::rooms::RoomError;
use crate::shard_state::ShardState;

/// At most this many PDUs and EDUs in one transaction (spec "Transactions").
pub const MAX_PDUS: usize = 50;
pub const MAX_EDUS: usize = 100;
/// A PDU's canonical JSON must fit in 64 KiB (spec "Size limits").
pub const MAX_PDU_BYTES: usize = 65_536;

/// What a PDU of a transaction became, for its answer.
type Checked = (OwnedEventId, Result<CanonicalJsonObject, String>);

/// Handles a transaction from `origin` (already authenticated): returns
/// the body of the `200` answer, `{"pdus": {event_id: {} | {"error"}}}`.
pub async fn receive(
    state: &Rc<ShardState>,
    origin: &str,
    txn_id: &str,
    pdus: Vec<Value>,
    edus: Vec<Value>,
) -> Result<Value, RoomError> {
    if let Some(row) = state
        .db
        .query_opt(
            "SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2",
            &[&origin, &txn_id],
        )
        .await?
    {
        let text: String = row.get(0)?;
        return serde_json::from_str(&text).map_err(|e| RoomError::Internal(e.to_string()));
    }
    let mut by_room: BTreeMap<String, Vec<CanonicalJsonObject>> = BTreeMap::new();
    for v in pdus {
        let Value::Object(m) = v else { continue };
        let Some(room) = m.get("room_id").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        if let Ok(obj) = canonical_json::try_from_json_map(m) {
            by_room.entry(room).or_default().push(obj);
        }
    }
    let mut results = Map::new();
    let mut staged: Vec<(OwnedRoomId, OwnedEventId, CanonicalJsonObject)> = Vec::new();
    for (room, pdus) in by_room {
        let Ok(room_id) = OwnedRoomId::try_from(room) else {
            continue;
        };
        for (id, outcome) in check_room_pdus(state, origin, &room_id, pdus).await? {
            match outcome {
                Ok(pdu) => {
                    results.insert(id.to_string(), json!({}));
                    staged.push((room_id.clone(), id, pdu));
                }
                Err(error) => {
                    tracing::info!(%origin, event = %id, %error, "refused a PDU of a transaction");
                    results.insert(id.to_string(), json!({ "error": error }));
                }
            }
        }
    }
    let response = json!({ "pdus": results });
    let now = crate::primitives::unix_ms_i64();
    let mut w = Write::new();
    for (room, id, pdu) in &staged {
        let text = serde_json::to_string(pdu).map_err(|e| RoomError::Internal(e.to_string()))?;
        w = w.statement(
            "INSERT INTO federation_staging (room_id, event_id, origin, pdu, received_ts) \
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                SqlValue::from(room.as_str()),
                id.as_str().into(),
                origin.into(),
                text.into(),
                now.into(),
            ],
        );
    }
    w = w.statement(
        "INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        vec![
            SqlValue::from(origin),
            txn_id.into(),
            response.to_string().into(),
            now.into(),
        ],
    );
    state.writer.submit(w).await?;
    let rooms: BTreeSet<OwnedRoomId> = staged.into_iter().map(|(r, _, _)| r).collect();
    for room in rooms {
        super::ingest::kick_owner(state, room).await;
    }
    super::edus::apply_all(state, origin, edus).await;
    Ok(response)
}

/// The checks made before staging, for the PDUs of one room.
async fn check_room_pdus(
    state: &Rc<ShardState>,
    origin: &str,
    room: &OwnedRoomId,
    pdus: Vec<CanonicalJsonObject>,
) -> Result<Vec<Checked>, RoomError> {
    let Some(row) = state
        .db
        .query_opt(
            "SELECT room_version FROM rooms WHERE room_id = $1",
            &[&room.as_str()],
        )
        .await?
    else {
        // An invite we keep may be taken back by its server; the rest is
        // ignored.
        if let Err(e) = super::invites::retracted(state, origin, room, &pdus).await {
            tracing::info!(%origin, %room, error = %e, "invite retraction not applied");
        }
        tracing::info!(%origin, %room, "ignoring PDUs of an unknown room");
        return Ok(Vec::new());
    };
    let version = match RoomVersion::parse(row.get::<&str>(0)?) {
        Ok(v) => v,
        Err(_) => return Ok(Vec::new()),
    };
    let acl_ok = server_allowed_in(state, room, origin).await?;
    let mut out = Vec::new();
    let mut to_verify = Vec::new();
    for pdu in pdus {
        let Ok(id) = event_id_of(&pdu, version) else {
            continue;
        };
        match precheck(&pdu, version, origin, acl_ok) {
            Ok(()) => to_verify.push((id, pdu)),
            Err(e) => out.push((id, Err(e))),
        }
    }
    out.extend(verify_pdus(state, version, to_verify).await?);
    Ok(out)
}

/// Whether `server` passes the room's current `m.room.server_acl`.
pub async fn server_allowed_in(
    state: &ShardState,
    room: &OwnedRoomId,
    server: &str,
) -> Result<bool, RoomError> {
    let row = state
        .db
        .query_opt(
            "SELECT e.json -> 'content' FROM current_state c JOIN room_pdus e USING (event_id) \
             WHERE c.room_id = $1 AND c.type = 'm.room.server_acl' AND c.state_key = ''",
            &[&room.as_str()],
        )
        .await?;
    let content: Option<Value> = match row {
        Some(r) => r.get(0)?,
        None => None,
    };
    Ok(super::acl::server_allowed(content.as_ref(), server))
}

/// Format, size, ACL and origin checks of one PDU (spec "Checks performed
/// on receipt of a PDU", 1., and "Transactions": a server sends its own
/// users' events).
fn precheck(
    pdu: &CanonicalJsonObject,
    version: RoomVersion,
    origin: &str,
    acl_ok: bool,
) -> Result<(), String> {
    if !acl_ok {
        return Err("Server is banned from this room by its server ACL".into());
    }
    let size = serde_json::to_vec(pdu)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PDU_BYTES {
        return Err(format!("PDU of {size} bytes is over the 64 KiB limit"));
    }
    ruma::state_res::check_pdu_format(pdu, &version.rules().event_format)
        .map_err(|e| format!("invalid PDU: {e}"))?;
    let sender = match pdu.get("sender") {
        Some(canonical_json::CanonicalJsonValue::String(s)) => {
            OwnedUserId::try_from(s.as_str()).map_err(|_| "sender is not a user id".to_owned())?
        }
        _ => return Err("PDU has no sender".into()),
    };
    if sender.server_name().as_str() != origin {
        return Err(format!(
            "sender {sender} does not belong to the origin {origin}"
        ));
    }
    Ok(())
}

/// Checks the signatures and content hashes of `pdus` (server-server
/// "Checks performed on receipt of a PDU", 2. and 3.): the keys of every
/// sender's server are fetched (cached per shard), then every check runs
/// in one job on the blocking pool, never on the shard. A PDU whose hash
/// does not match is kept redacted, as the spec says.
pub async fn verify_pdus(
    state: &Rc<ShardState>,
    version: RoomVersion,
    pdus: Vec<(OwnedEventId, CanonicalJsonObject)>,
) -> Result<Vec<Checked>, RoomError> {
    if pdus.is_empty() {
        return Ok(Vec::new());
    }
    let mut servers = BTreeSet::new();
    for (_, pdu) in &pdus {
        if let Some(canonical_json::CanonicalJsonValue::String(s)) = pdu.get("sender") {
            if let Ok(u) = OwnedUserId::try_from(s.as_str()) {
                servers.insert(u.server_name().to_string());
            }
        }
    }
    let mut keys = PublicKeyMap::new();
    let own = state.key.server_name.to_string();
    for server in servers {
        if server == own {
            let mut m = BTreeMap::new();
            m.insert(
                state.key.key_id.to_string(),
                Base64::new(state.key.keypair.public_key().to_vec()),
            );
            keys.insert(server, m);
            continue;
        }
        match state.federation.server_keys(&server, 0).await {
            Ok(k) => {
                let mut m = BTreeMap::new();
                for (id, (key, _expired)) in &k.old_verify_keys {
                    m.insert(id.clone(), Base64::new(key.clone()));
                }
                for (id, key) in &k.verify_keys {
                    m.insert(id.clone(), Base64::new(key.clone()));
                }
                keys.insert(server, m);
            }
            Err(e) => {
                tracing::info!(%server, error = %e, "cannot fetch a sender server's keys");
            }
        }
    }
    let run = move || -> Vec<Checked> {
        pdus.into_iter()
            .map(|(id, pdu)| {
                let outcome = match verify_pdu(&pdu, version, &keys) {
                    Ok(Verified::All) => Ok(pdu),
                    Ok(Verified::Signatures) => {
                        redact(&pdu, version).map_err(|e| format!("cannot redact: {e}"))
                    }
                    Err(e) => Err(format!("signature check failed: {e}")),
                };
                (id, outcome)
            })
            .collect()
    };
    crate::blocking::run(run)
        .await
        .map_err(|e| RoomError::Internal(format!("signature checks: {e}")))
}

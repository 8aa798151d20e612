//! Send-to-device messaging (client-server API "Send-to-Device messaging").
//!
//! **Storing.** Messages go to the **recipient's shard** (one mesh job per
//! recipient shard), into `device_inbox`, numbered by that shard's stream
//! and committed before the sender is answered. Idempotency per (sender,
//! sender device, txn id) is decided per recipient shard in the same SQL
//! statement as the insert (`to_device_txns`), so a retried request stores
//! nothing twice even if an earlier attempt reached only some shards.
//! `*` expands to every device of the user; unknown devices are skipped
//! (as Synapse).
//!
//! **Delivering exactly once** (Synapse's semantics: a message stays until
//! the client syncs with a token past the response that carried it). A
//! sync token holds one shared persisted position per shard, so the inbox
//! cannot move its own position back when a response carries only the
//! first [`MAX_PER_SYNC`] messages. Instead each delivered row is marked
//! with the response's token position of the user's shard (`delivered_p`,
//! `delivered_e`); a later sync whose `since` is at or past that mark
//! acknowledges (deletes) it, and a retry with an older token gets it again.
//! When a response leaves messages behind, the shard's ephemeral counter is
//! bumped before answering, so the next response's mark differs from this
//! one: a retry of that next sync cannot acknowledge messages it never saw.

use std::collections::{BTreeMap, HashMap};

use ruma::{OwnedUserId, UserId};
use serde_json::{json, Value};

use crate::db::{SqlValue, Write};
use crate::mesh::{shard_for_user, MeshEndpoint};
use crate::shard_state::ShardState;
use crate::stream::{Change, Pos, ShardPos, StreamToken, UserChange};

use super::{on_shard, service, shard_i32, EphError};

/// Most messages one sync delivers (Synapse: 100).
pub const MAX_PER_SYNC: usize = 100;

/// `messages` of `PUT /sendToDevice`: user → device (or `*`) → content.
pub type Messages = BTreeMap<OwnedUserId, BTreeMap<String, Value>>;

/// Who sends, with which transaction.
#[derive(Debug, Clone)]
pub struct Sender {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub txn_id: String,
}

/// Stores `messages` of `event_type` for their local recipients; returns
/// once every recipient shard has committed and announced. Recipients on
/// other servers go out as `m.direct_to_device` EDUs, durable until
/// their server acknowledged them.
pub async fn send(
    mesh: &MeshEndpoint,
    server_name: &str,
    sender: Sender,
    event_type: String,
    messages: Messages,
) -> Result<(), EphError> {
    let n = mesh.n_shards();
    let mut per_shard: HashMap<usize, Vec<(String, String, String)>> = HashMap::new();
    let mut remote: BTreeMap<String, Messages> = BTreeMap::new();
    for (user, devices) in messages {
        if user.server_name().as_str() != server_name {
            if sender.user_id.server_name().as_str() == server_name {
                remote
                    .entry(user.server_name().to_string())
                    .or_default()
                    .insert(user, devices);
            }
            continue;
        }
        let shard = shard_for_user(&user, n);
        for (device, content) in devices {
            if !content.is_object() {
                return Err(EphError::BadJson(
                    "each message content must be an object".into(),
                ));
            }
            per_shard.entry(shard).or_default().push((
                user.to_string(),
                device,
                content.to_string(),
            ));
        }
    }
    // Server-server "Send-to-device messaging": one EDU per server, durable
    // until the server answered 200 (Synapse's device_federation_outbox).
    if !remote.is_empty() {
        let state = crate::shard_state::current_shard()
            .ok_or_else(|| EphError::Internal("to-device outside a shard".into()))?;
        for (server, msgs) in remote {
            let content = serde_json::json!({
                "sender": sender.user_id, "type": event_type,
                "message_id": sender.txn_id, "messages": msgs});
            crate::federation::sender::queue_durable(
                &state.db,
                &server,
                "m.direct_to_device",
                &content,
            )
            .await?;
        }
    }
    let jobs = per_shard.into_iter().map(|(shard, rows)| {
        let sender = sender.clone();
        let event_type = event_type.clone();
        on_shard(mesh, shard, move |state| async move {
            store(&state, sender, event_type, rows).await
        })
    });
    for r in futures_util::future::join_all(jobs).await {
        r?;
    }
    Ok(())
}

/// On the recipient shard: one statement inserting the txn marker and, only
/// if it was new, the messages; then the announcement.
async fn store(
    state: &ShardState,
    sender: Sender,
    event_type: String,
    rows: Vec<(String, String, String)>,
) -> Result<(), EphError> {
    let ticket = state.stream.allocate();
    let pos = ticket.pos();
    let shard = shard_i32(state.stream.shard())?;
    let mut users: Vec<String> = Vec::with_capacity(rows.len());
    let mut devices = Vec::with_capacity(rows.len());
    let mut contents = Vec::with_capacity(rows.len());
    for (u, d, c) in rows {
        users.push(u);
        devices.push(d);
        contents.push(c);
    }
    let w = Write::new().statement(
        "WITH txn AS ( \
           INSERT INTO to_device_txns (sender, sender_device, txn_id, stream_shard, \
             stream_ordering, created_ts) VALUES ($1, $2, $3, $4, $6, $5) ON CONFLICT DO NOTHING RETURNING 1) \
         INSERT INTO device_inbox (user_id, device_id, stream_shard, stream_ordering, \
           sender, type, content) \
         SELECT DISTINCT ON (d.user_id, d.device_id) d.user_id, d.device_id, $4, $6, $1, $7, \
           m.content::jsonb \
         FROM unnest($8::text[], $9::text[], $10::text[]) AS m(user_id, device_id, content) \
         JOIN devices d ON d.user_id = m.user_id \
           AND (m.device_id = '*' OR d.device_id = m.device_id) \
         WHERE EXISTS (SELECT 1 FROM txn) \
         ORDER BY d.user_id, d.device_id, (m.device_id = '*') \
         ON CONFLICT DO NOTHING",
        vec![
            sender.user_id.as_str().into(),
            sender.device_id.into(),
            sender.txn_id.into(),
            shard.into(),
            crate::primitives::unix_ms_i64().into(),
            pos.into(),
            event_type.into(),
            SqlValue::TextArray(users.clone()),
            SqlValue::TextArray(devices),
            SqlValue::TextArray(contents),
        ],
    );
    let res = state.writer.submit(w).await?;
    let mut changes = Vec::new();
    if res.first().is_some_and(|r| r.rows_affected > 0) {
        users.sort();
        users.dedup();
        for u in users {
            if let Ok(user_id) = OwnedUserId::try_from(u) {
                changes.push(Change::User {
                    user_id,
                    pos: Pos::Persisted(pos),
                    what: UserChange::ToDevice,
                });
            }
        }
    }
    ticket.publish(changes).await;
    Ok(())
}

/// `to_device.events` of a sync of `(user, device)`: acknowledges (deletes)
/// what earlier responses delivered up to `since`, then returns up to
/// [`MAX_PER_SYNC`] pending messages (`{sender, type, content}`), marked as
/// delivered in the response whose `next_batch` is `current`.
/// Runs on the user's shard (forwarded there otherwise).
pub async fn for_sync(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    device: String,
    since: Option<StreamToken>,
    current: StreamToken,
) -> Result<Vec<Value>, EphError> {
    let target = shard_for_user(&user, mesh.n_shards());
    on_shard(mesh, target, move |state| async move {
        deliver(&state, &user, &device, since.as_ref(), &current).await
    })
    .await
}

/// Deletes what earlier responses delivered to `(user, device)` at or
/// before `since` (the acknowledgement). Memory only unless something is
/// outstanding: cheap enough for the sync's cheap path, which must call
/// [`acknowledge`] so a client never gets a message back once it synced
/// past it.
pub async fn acknowledge(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    device: String,
    since: StreamToken,
) -> Result<(), EphError> {
    let target = shard_for_user(&user, mesh.n_shards());
    on_shard(mesh, target, move |state| async move {
        ack(&state, &user, &device, &since).await
    })
    .await
}

/// Whether `user` (of this shard) may have to-device messages delivered
/// but not yet acknowledged: one lookup, no allocation, so a sync with
/// nothing outstanding (nearly all) skips [`acknowledge`] entirely.
pub fn may_have_outstanding(state: &ShardState, user: &UserId) -> bool {
    service::get(state)
        .to_device_outstanding
        .borrow()
        .contains_key(user)
}

fn outstanding_of(state: &ShardState, user: &UserId, device: &str) -> Option<(ShardPos, bool)> {
    service::get(state)
        .to_device_outstanding
        .borrow()
        .get(user)
        .and_then(|d| d.get(device))
        .copied()
}

fn clear_outstanding(state: &ShardState, user: &UserId, device: &str) {
    let svc = service::get(state);
    let mut map = svc.to_device_outstanding.borrow_mut();
    if let Some(d) = map.get_mut(user) {
        d.remove(device);
        if d.is_empty() {
            map.remove(user);
        }
    }
}

async fn ack(
    state: &ShardState,
    user: &UserId,
    device: &str,
    since: &StreamToken,
) -> Result<(), EphError> {
    let at = since.get(state.stream.shard());
    if let Some((m, more)) = outstanding_of(state, user, device) {
        if m.persisted <= at.persisted && m.ephemeral <= at.ephemeral {
            delete_acknowledged(state, user, device, at).await?;
            if !more {
                clear_outstanding(state, user, device);
            }
        }
    }
    Ok(())
}

async fn delete_acknowledged(
    state: &ShardState,
    user: &UserId,
    device: &str,
    at: ShardPos,
) -> Result<(), EphError> {
    state
        .db
        .execute(
            "DELETE FROM device_inbox WHERE user_id = $1 AND device_id = $2 \
             AND delivered_p IS NOT NULL AND delivered_p <= $3 AND delivered_e <= $4",
            &[&user.as_str(), &device, &at.persisted, &at.ephemeral],
        )
        .await?;
    Ok(())
}

async fn deliver(
    state: &ShardState,
    user: &UserId,
    device: &str,
    since: Option<&StreamToken>,
    current: &StreamToken,
) -> Result<Vec<Value>, EphError> {
    let svc = service::get(state);
    let s = state.stream.shard();
    if let Some(since) = since {
        let outstanding = outstanding_of(state, user, device).is_some();
        if !outstanding && !state.notifier.ephemeral.to_device_changed(user, since) {
            return Ok(Vec::new()); // nothing delivered unacknowledged, nothing new
        }
        // Marks may predate this process (no memory of them): always look.
        delete_acknowledged(state, user, device, since.get(s)).await?;
    }
    let n = state.mesh.n_shards();
    let upto = current.persisted_vec(n);
    let limit = i64::try_from(MAX_PER_SYNC + 1).unwrap_or(i64::MAX);
    let rows = state
        .db
        .query(
            "SELECT stream_shard, stream_ordering, sender, type, content FROM device_inbox \
             WHERE user_id = $1 AND device_id = $2 \
             AND stream_ordering <= coalesce(($3::bigint[])[stream_shard + 1], 0) \
             ORDER BY stream_shard, stream_ordering LIMIT $4",
            &[&user.as_str(), &device, &upto, &limit],
        )
        .await?;
    let more = rows.len() > MAX_PER_SYNC;
    let mut events = Vec::with_capacity(rows.len().min(MAX_PER_SYNC));
    let mut last = None;
    for row in rows.iter().take(MAX_PER_SYNC) {
        let shard: i32 = row.get(0)?;
        let pos: i64 = row.get(1)?;
        let sender: String = row.get(2)?;
        let kind: String = row.get(3)?;
        let content: Value = row.get(4)?;
        last = Some((shard, pos));
        events.push(json!({"sender": sender, "type": kind, "content": content}));
    }
    let Some((last_shard, last_pos)) = last else {
        clear_outstanding(state, user, device);
        return Ok(events);
    };
    let mark = current.get(s);
    // Durable before the response: a lost mark would let a later sync
    // deliver an acknowledged message again.
    state
        .db
        .execute(
            "UPDATE device_inbox SET delivered_p = $3, delivered_e = $4 \
             WHERE user_id = $1 AND device_id = $2 \
             AND (stream_shard, stream_ordering) <= ($5, $6) \
             AND stream_ordering <= coalesce(($7::bigint[])[stream_shard + 1], 0)",
            &[
                &user.as_str(),
                &device,
                &mark.persisted,
                &mark.ephemeral,
                &last_shard,
                &last_pos,
                &upto,
            ],
        )
        .await?;
    svc.to_device_outstanding
        .borrow_mut()
        .entry(user.to_owned())
        .or_default()
        .insert(device.to_owned(), (mark, more));
    if more {
        bump_ephemeral(state, user, mark.ephemeral).await;
    }
    Ok(events)
}

/// Moves this shard's ephemeral position past `seen` and waits until this
/// shard's notifier has applied it (so the next sync's token differs).
async fn bump_ephemeral(state: &ShardState, user: &UserId, seen: i64) {
    let s = state.stream.shard();
    let owned = user.to_owned();
    state.stream.publish_ephemeral(move |pos| {
        vec![Change::User {
            user_id: owned,
            pos: Pos::Ephemeral(pos),
            what: UserChange::Poke,
        }]
    });
    let deadline = std::time::Duration::from_secs(5);
    while state.notifier.current().ephemeral(s) <= seen {
        let now = state.notifier.current();
        // The bump touches `user`, so this wakes when it is applied.
        if !state.notifier.wait_for_user(user, &now, deadline).await {
            break; // shutting down or the mesh is gone: give up waiting
        }
    }
}

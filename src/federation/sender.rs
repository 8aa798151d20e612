//! Outbound transactions (server-server "Transactions"): one queue per
//! destination, on the shard the destination hashes to (as rooms are
//! placed), delivering `federation_outbox` rows (written with the events
//! themselves by `rooms::pipeline`, so nothing acknowledged is lost across
//! a crash) and EDUs: typing, receipts and presence from memory (best
//! effort, as the spec allows); device list and signing key updates and
//! to-device messages from `federation_edu_outbox` rows ([`queue_durable`],
//! written with the change they announce), deleted only once a `200`
//! acknowledged them, so they survive a restart and a peer's outage.
//!
//! A queue sends at most 50 PDUs and 100 EDUs per transaction, one
//! transaction in flight, and deletes the rows a `200` acknowledged. On
//! failure it backs off exponentially between `retry_min_ms` and
//! `retry_max_ms` (reset by a success) and then **catches up**: of the
//! events still queued it keeps only the newest per room, since the
//! destination fetches what it lacks with `/get_missing_events` (as
//! Synapse's per-destination catch-up does) instead of replaying an
//! outage's whole backlog. EDUs are coalesced while queued: a newer typing
//! or receipt of the same user and room replaces the older one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::mesh::{fnv1a64, jump_consistent_hash};
use crate::rooms::RoomError;
use crate::shard_state::{current_shard, on_shard, Here, ShardState};

/// PDUs and EDUs per transaction, at most (spec "Transactions").
const MAX_PDUS: i64 = 50;
const MAX_EDUS: usize = 100;
/// EDUs kept for an unreachable destination, at most (the oldest go).
const MAX_QUEUED_EDUS: usize = 1_000;
/// Durable EDUs per transaction, at most (the rest of `MAX_EDUS` is left
/// to the in-memory ones, so typing is not starved by a backlog).
const MAX_DURABLE_EDUS: i64 = 80;

/// An EDU waiting for its transaction; `key` coalesces (same key: the
/// newer replaces the older).
struct QueuedEdu {
    key: Option<String>,
    edu: Value,
}

#[derive(Default)]
struct Queue {
    running: bool,
    /// Kicked while a transaction was in flight: look again.
    again: bool,
    edus: Vec<QueuedEdu>,
    backoff: Option<Duration>,
}

thread_local! {
    static QUEUES: RefCell<HashMap<String, Queue>> = RefCell::new(HashMap::new());
    /// Transaction ids: start time plus a counter, unique per process run.
    static TXN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The shard whose queue serves `destination`.
pub fn shard_for_destination(destination: &str, n_shards: usize) -> usize {
    jump_consistent_hash(fnv1a64(destination.as_bytes()), n_shards)
}

/// Wakes the queues of `destinations` (from any shard; no-op off the
/// shards, e.g. in room-core tests without federation).
pub fn kick_destinations(destinations: Vec<String>) {
    if destinations.is_empty() {
        return;
    }
    let Some(state) = current_shard() else {
        return;
    };
    let n = state.mesh.n_shards();
    let mut by_shard: HashMap<usize, Vec<String>> = HashMap::new();
    for d in destinations {
        by_shard
            .entry(shard_for_destination(&d, n))
            .or_default()
            .push(d);
    }
    for (shard, dests) in by_shard {
        let mesh = state.mesh.clone();
        drop(monoio::spawn(async move {
            let res = on_shard(&mesh, shard, Here::Inline, move |s| async move {
                for d in dests {
                    kick(&s, d);
                }
            })
            .await;
            if let Err(e) = res {
                // The rows stay; the queue's shard picks them up at start.
                tracing::warn!(error = %e, "cannot wake a destination's queue");
            }
        }));
    }
}

/// Queues `edu` for each of `destinations` (coalesced by `key`).
pub fn queue_edu(destinations: &[String], key: Option<String>, edu: Value) {
    if destinations.is_empty() {
        return;
    }
    let Some(state) = current_shard() else {
        return;
    };
    let n = state.mesh.n_shards();
    for d in destinations {
        let (d, key, edu) = (d.clone(), key.clone(), edu.clone());
        let mesh = state.mesh.clone();
        drop(monoio::spawn(async move {
            let target = shard_for_destination(&d, n);
            let _ = on_shard(&mesh, target, Here::Inline, move |s| async move {
                push_edu(&d, key, edu);
                kick(&s, d);
            })
            .await;
        }));
    }
}

/// The statement queueing a durable EDU for `destination` (to join the
/// transaction of the change it announces); kick the destination after
/// the COMMIT ([`kick_destinations`]).
pub const QUEUE_DURABLE_SQL: &str = "INSERT INTO federation_edu_outbox \
     (destination, edu_type, content, queued_ts) VALUES ($1, $2, $3, $4)";

/// Queues a durable EDU (its own write) and wakes the destination.
pub async fn queue_durable(
    db: &crate::db::Pool,
    destination: &str,
    edu_type: &str,
    content: &Value,
) -> Result<(), crate::db::DbError> {
    let now = crate::primitives::unix_ms_i64();
    db.execute(QUEUE_DURABLE_SQL, &[&destination, &edu_type, content, &now])
        .await?;
    kick_destinations(vec![destination.to_owned()]);
    Ok(())
}

fn push_edu(destination: &str, key: Option<String>, edu: Value) {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let queue = q.entry(destination.to_owned()).or_default();
        if let Some(k) = &key {
            queue.edus.retain(|e| e.key.as_ref() != Some(k));
        }
        queue.edus.push(QueuedEdu { key, edu });
        let over = queue.edus.len().saturating_sub(MAX_QUEUED_EDUS);
        queue.edus.drain(..over);
    });
}

/// Starts (or re-arms) this shard's queue for `destination`.
pub fn kick(state: &Rc<ShardState>, destination: String) {
    let start = QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let queue = q.entry(destination.clone()).or_default();
        if queue.running {
            queue.again = true;
            false
        } else {
            queue.running = true;
            true
        }
    });
    if start {
        drop(monoio::spawn(run(state.clone(), destination)));
    }
}

/// At start: every destination of this shard with queued events.
pub async fn resume(state: &Rc<ShardState>) -> Result<usize, RoomError> {
    let rows = state
        .db
        .query(
            "SELECT destination FROM federation_outbox \
             UNION SELECT destination FROM federation_edu_outbox",
            &[],
        )
        .await?;
    let n = state.mesh.n_shards();
    let mut count = 0;
    for r in rows {
        let d: String = r.get(0)?;
        if shard_for_destination(&d, n) == state.info.id {
            kick(state, d);
            count += 1;
        }
    }
    Ok(count)
}

fn next_txn_id() -> String {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(crate::primitives::unix_ms);
    let n = TXN.with(|c| {
        let n = c.get() + 1;
        c.set(n);
        n
    });
    let shard = current_shard().map_or(0, |s| s.info.id);
    format!("{start}-{shard}-{n}")
}

fn take_edus(destination: &str, max: usize) -> Vec<QueuedEdu> {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let Some(queue) = q.get_mut(destination) else {
            return Vec::new();
        };
        let n = queue.edus.len().min(max);
        queue.edus.drain(..n).collect()
    })
}

fn put_back_edus(destination: &str, mut edus: Vec<QueuedEdu>) {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let queue = q.entry(destination.to_owned()).or_default();
        // Newer ones queued meanwhile win over the returned ones.
        edus.retain(|e| {
            e.key
                .as_ref()
                .is_none_or(|k| !queue.edus.iter().any(|n| n.key.as_ref() == Some(k)))
        });
        edus.append(&mut queue.edus);
        queue.edus = edus;
    });
}

/// One destination's queue on this shard, for metrics. Healthy idle
/// queues are dropped (`finish`), so only active or failing ones appear.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub destination: String,
    /// In-memory EDUs waiting (typing, receipts, presence).
    pub queued_edus: usize,
    /// The wait after the last failure; `None` while healthy.
    pub backoff: Option<Duration>,
    /// A transaction loop is running for it.
    pub sending: bool,
}

/// This shard's destination queues.
pub fn queue_stats() -> Vec<QueueStats> {
    QUEUES.with(|q| {
        q.borrow()
            .iter()
            .map(|(d, queue)| QueueStats {
                destination: d.clone(),
                queued_edus: queue.edus.len(),
                backoff: queue.backoff,
                sending: queue.running,
            })
            .collect()
    })
}

/// Whether the queue may stop: nothing kicked it meanwhile, no EDUs.
fn finish(destination: &str) -> bool {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let Some(queue) = q.get_mut(destination) else {
            return true;
        };
        if queue.again || !queue.edus.is_empty() {
            queue.again = false;
            return false;
        }
        queue.running = false;
        if queue.backoff.is_none() {
            q.remove(destination);
        }
        true
    })
}

fn backoff(state: &ShardState, destination: &str, failed: bool) -> Option<Duration> {
    let cfg = &state.config.federation;
    let min = Duration::from_millis(cfg.retry_min_ms.max(1));
    let max = Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_min_ms.max(1)));
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let queue = q.entry(destination.to_owned()).or_default();
        queue.backoff = if failed {
            Some(queue.backoff.map_or(min, |b| (b * 2).min(max)))
        } else {
            None
        };
        queue.backoff
    })
}

async fn run(state: Rc<ShardState>, destination: String) {
    loop {
        match send_once(&state, &destination).await {
            Ok(true) => {
                backoff(&state, &destination, false);
            }
            Ok(false) => {
                if finish(&destination) {
                    return;
                }
            }
            Err(e) => {
                let wait = backoff(&state, &destination, true).unwrap_or_default();
                tracing::info!(%destination, error = %e, retry_in_ms = wait.as_millis() as u64,
                    "federation transaction failed");
                monoio::time::sleep(wait).await;
                if let Err(e) = catch_up(&state, &destination).await {
                    tracing::warn!(%destination, error = %e, "cannot compact the queue");
                }
            }
        }
    }
}

/// Of the queued events keep only the newest per room.
async fn catch_up(state: &ShardState, destination: &str) -> Result<(), RoomError> {
    let n = state
        .db
        .execute(
            "DELETE FROM federation_outbox o WHERE destination = $1 AND seq < \
             (SELECT max(seq) FROM federation_outbox m \
              WHERE m.destination = $1 AND m.room_id = o.room_id)",
            &[&destination],
        )
        .await?;
    if n > 0 {
        tracing::info!(%destination, dropped = n, "catching up: newest event per room only");
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Fed(#[from] super::FedError),
}

/// One transaction to `destination`; `Ok(false)`: nothing to send.
async fn send_once(state: &Rc<ShardState>, destination: &str) -> Result<bool, SendError> {
    let rows = state
        .db
        .query(
            "SELECT o.seq, p.json FROM federation_outbox o \
             LEFT JOIN room_pdus p ON p.event_id = o.event_id \
             WHERE o.destination = $1 ORDER BY o.seq LIMIT $2",
            &[&destination, &MAX_PDUS],
        )
        .await?;
    let mut seqs = Vec::with_capacity(rows.len());
    let mut pdus = Vec::with_capacity(rows.len());
    for r in &rows {
        seqs.push(r.get::<i64>(0)?);
        if let Some(json) = r.get::<Option<Value>>(1)? {
            pdus.push(json);
        }
    }
    let durable = state
        .db
        .query(
            "SELECT seq, edu_type, content FROM federation_edu_outbox \
             WHERE destination = $1 ORDER BY seq LIMIT $2",
            &[&destination, &MAX_DURABLE_EDUS],
        )
        .await?;
    let mut durable_seqs = Vec::with_capacity(durable.len());
    let mut all_edus = Vec::with_capacity(durable.len());
    for r in &durable {
        durable_seqs.push(r.get::<i64>(0)?);
        let kind: String = r.get(1)?;
        let content: Value = r.get(2)?;
        all_edus.push(json!({"edu_type": kind, "content": content}));
    }
    let edus = take_edus(destination, MAX_EDUS - durable_seqs.len());
    if seqs.is_empty() && edus.is_empty() && durable_seqs.is_empty() {
        return Ok(false);
    }
    all_edus.extend(edus.iter().map(|e| e.edu.clone()));
    let body = json!({
        "origin": state.config.server_name,
        "origin_server_ts": crate::primitives::unix_ms(),
        "pdus": pdus,
        "edus": all_edus,
    });
    let path = format!("/_matrix/federation/v1/send/{}", next_txn_id());
    let answer: Result<Value, _> = state
        .federation
        .request_json(destination, "PUT", &path, Some(&body))
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            put_back_edus(destination, edus);
            return Err(e.into());
        }
    };
    if let Some(results) = answer.get("pdus").and_then(Value::as_object) {
        for (id, r) in results {
            if let Some(err) = r.get("error") {
                tracing::info!(%destination, event = %id, error = %err, "destination refused a PDU");
            }
        }
    }
    state
        .db
        .pipeline_transaction(&[
            (
                "DELETE FROM federation_outbox WHERE seq = ANY($1)",
                &[&seqs],
            ),
            (
                "DELETE FROM federation_edu_outbox WHERE seq = ANY($1)",
                &[&durable_seqs],
            ),
        ])
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edus_with_one_key_coalesce_and_the_queue_is_bounded() {
        let d = "coalesce.test";
        push_edu(d, Some("typing:r:u".into()), json!(1));
        push_edu(d, Some("typing:r:u".into()), json!(2));
        push_edu(d, None, json!(3));
        let got: Vec<Value> = take_edus(d, MAX_EDUS).into_iter().map(|e| e.edu).collect();
        assert_eq!(got, vec![json!(2), json!(3)]);
        for i in 0..(MAX_QUEUED_EDUS + 5) {
            push_edu(d, None, json!(i));
        }
        let n = QUEUES.with(|q| q.borrow()[d].edus.len());
        assert_eq!(n, MAX_QUEUED_EDUS);
    }

    #[test]
    fn returned_edus_lose_to_newer_ones() {
        let d = "putback.test";
        push_edu(d, Some("k".into()), json!("old"));
        let taken = take_edus(d, MAX_EDUS);
        push_edu(d, Some("k".into()), json!("new"));
        put_back_edus(d, taken);
        let got: Vec<Value> = take_edus(d, MAX_EDUS).into_iter().map(|e| e.edu).collect();
        assert_eq!(got, vec![json!("new")]);
    }

    #[test]
    fn destinations_are_placed_stably() {
        assert_eq!(shard_for_destination("matrix.org", 1), 0);
        let a = shard_for_destination("matrix.org", 4);
        assert_eq!(a, shard_for_destination("matrix.org", 4));
    }
}

//! A room's write pipeline: events built one after another under the
//! room's lock, committed together, answered in order.
//!
//! Why: a room's writes are serialised (each event's `prev_events`, depth
//! and state come from the one before), and holding the room's lock from
//! building an event until its COMMIT capped a hot room at one event per
//! database round trip. Instead the lock covers only building: the event
//! is prepared on the room's *tail* (its head after every event prepared
//! so far), queued here, and the lock released; the next send builds on
//! the new tail at once.
//!
//! When a batch commits: a room has at most one write in flight. Whatever
//! was queued meanwhile (up to [`MAX_CHAIN`] events) goes next as **one**
//! group-commit write, so the events of one room are one transaction,
//! committed in the order they were built, and a later event never commits
//! without the earlier ones it references (two separate writes could: group
//! commit keeps two batches in flight and retries a failed batch write by
//! write).
//!
//! What a failure means: the write's outcome is unknown, so every event of
//! it, and every event queued behind it (built on it), fails; none was
//! answered. The room's cached head is dropped (reloaded from the database)
//! and so are the failed events' cache entries; their stream positions stay
//! gaps. The tail is rebuilt from the database by the next send.
//!
//! Readers never see the tail: `Rooms::head` is the committed head, put in
//! the cache after each COMMIT.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use ruma::{OwnedEventId, OwnedRoomId};

use crate::db::local::{oneshot, Answer, Reply};
use crate::db::{DbError, Write};
use crate::stream::{Change, Ticket};

use super::service::{RoomHead, Rooms};
use super::RoomError;
use crate::events::Pdu;

/// Most events of one room in one write.
pub const MAX_CHAIN: usize = 64;

/// `(sender, device, room, txn)` of an idempotent `PUT /send`.
pub type TxnKey = (String, String, String, String);

/// An event prepared on the tail, waiting for its write.
pub(super) struct Prepared {
    pub write: Write,
    pub pdu: Rc<Pdu>,
    pub stream: i64,
    /// The room's head after it (`None`: soft-failed or outlier, the head
    /// does not move).
    pub head: Option<Rc<RoomHead>>,
    /// Its change to the room's `room_extremities` row.
    pub ext: Option<ExtremityChange>,
    pub txn: Option<TxnKey>,
}

/// An event's change to the forward extremities: its prev events stop
/// being ones, it becomes one. A chain writes only the net change: in one
/// hot room, a DELETE and INSERT per event left a dead index entry per
/// event under the same `room_id`, and each later DELETE scanned them all
/// (PostgreSQL CPU per event doubled, and grew with the room).
#[derive(Debug, Clone)]
pub struct ExtremityChange {
    pub removed: Vec<String>,
    pub added: String,
}

/// The net change of a chain's events, in order.
fn net_extremities(changes: impl Iterator<Item = ExtremityChange>) -> (Vec<String>, Vec<String>) {
    let (mut removed, mut added): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for c in changes {
        for r in c.removed {
            if let Some(i) = added.iter().position(|a| *a == r) {
                added.remove(i);
            } else if !removed.contains(&r) {
                removed.push(r);
            }
        }
        added.push(c.added);
    }
    (removed, added)
}

struct Queued {
    prepared: Prepared,
    reply: Reply<Result<(), Failed>>,
}

/// Why a chain's write failed, for each of its events (`DbError` is not
/// `Clone`).
#[derive(Debug, Clone)]
struct Failed {
    busy: bool,
    message: String,
}

impl From<Failed> for RoomError {
    fn from(f: Failed) -> RoomError {
        if f.busy {
            RoomError::Db(DbError::Busy)
        } else {
            RoomError::Db(DbError::Closed(f.message))
        }
    }
}

/// One room with writes in flight or queued.
struct Pipe {
    tail: Rc<RoomHead>,
    queued: VecDeque<Queued>,
}

/// The shard's pipelines, one per room with writes outstanding.
#[derive(Default)]
pub struct Pipelines {
    pipes: RefCell<HashMap<OwnedRoomId, Pipe>>,
    /// Txn ids of events not yet committed (a retried `PUT /send` waits for
    /// the first to commit instead of building a second event).
    txns: RefCell<HashMap<TxnKey, OwnedEventId>>,
    /// Bumped on every failure: a head read before it is stale.
    failures: std::cell::Cell<u64>,
    /// Fires after every write of any room (for txn waiters).
    committed: crate::primitives::Notify,
}

impl Pipelines {
    /// The room's tail, if writes are outstanding.
    pub(super) fn tail(&self, room: &OwnedRoomId) -> Option<Rc<RoomHead>> {
        self.pipes.borrow().get(room).map(|p| p.tail.clone())
    }

    /// The failure count, to detect a failure while building on a head.
    pub(super) fn epoch(&self) -> u64 {
        self.failures.get()
    }

    /// The event id of an uncommitted event sent with this txn id.
    pub(super) fn pending_txn(&self, key: &TxnKey) -> Option<OwnedEventId> {
        self.txns.borrow().get(key).cloned()
    }

    /// `(room, txn)` of the device's txn ids not yet committed or failed.
    pub(super) fn pending_of(&self, user: &str, device: &str) -> Vec<(String, String)> {
        self.txns
            .borrow()
            .keys()
            .filter(|k| k.0 == user && k.1 == device)
            .map(|k| (k.2.clone(), k.3.clone()))
            .collect()
    }

    /// Waits until the room has no write in flight or queued (the caller
    /// holds the room's lock, so none is added meanwhile).
    pub(super) async fn idle(&self, room: &OwnedRoomId) {
        while self.pipes.borrow().contains_key(room) {
            self.committed.notified().await;
        }
    }

    /// Waits until the txn id is no longer pending (committed or failed).
    pub(super) async fn wait_txn(&self, key: &TxnKey) {
        while self.txns.borrow().contains_key(key) {
            self.committed.notified().await;
        }
    }
}

/// An event on its way to the database; [`Committing::done`] answers.
pub(super) struct Committing {
    pdu: Rc<Pdu>,
    ticket: Ticket,
    change: Option<Change>,
    answer: Answer<Result<(), Failed>>,
}

impl Committing {
    /// Waits for the COMMIT, then for every shard to have applied the
    /// announcement (read-your-writes for `/sync`), and returns the event.
    pub async fn done(self) -> Result<Rc<Pdu>, RoomError> {
        match self.answer.await {
            Some(Ok(())) => {
                self.ticket.publish(self.change.into_iter().collect()).await;
                Ok(self.pdu)
            }
            // The ticket drops: its position stays a gap.
            Some(Err(f)) => Err(f.into()),
            None => Err(RoomError::Internal("room write pipeline stopped".into())),
        }
    }
}

impl Rooms {
    /// Queues a prepared event behind the room's earlier ones. `base` is the
    /// head it was built on and `epoch` the failure count then: if a
    /// failure happened since, the event was built on writes that never
    /// happened and is refused.
    pub(super) fn enqueue(
        self: &Rc<Self>,
        epoch: u64,
        prepared: Prepared,
        ticket: Ticket,
        change: Option<Change>,
        unchanged: Option<&RoomHead>,
    ) -> Result<Committing, RoomError> {
        let p = &self.pipelines;
        if p.failures.get() != epoch {
            return Err(RoomError::Db(DbError::Closed(
                "an earlier write to the room failed".into(),
            )));
        }
        let room = prepared.pdu.room_id.clone();
        let pdu = prepared.pdu.clone();
        if let Some(key) = &prepared.txn {
            p.txns
                .borrow_mut()
                .insert(key.clone(), pdu.event_id.clone());
            self.txn_memory.note(key);
        }
        // Later builds read this event (auth events, redactions) from the
        // cache before it is committed.
        self.events.put(pdu.clone());
        let (reply, answer) = oneshot();
        let start = {
            let mut pipes = p.pipes.borrow_mut();
            let queued = Queued { prepared, reply };
            match pipes.get_mut(&room) {
                Some(pipe) => {
                    if let Some(h) = &queued.prepared.head {
                        pipe.tail = h.clone();
                    }
                    pipe.queued.push_back(queued);
                    false
                }
                None => {
                    let tail = match (&queued.prepared.head, unchanged) {
                        (Some(h), _) => h.clone(),
                        // A soft-failed event or outlier first: the tail is
                        // the head the caller built on.
                        (None, Some(h)) => Rc::new(h.clone()),
                        (None, None) => {
                            return Err(RoomError::Internal("no head for the tail".into()))
                        }
                    };
                    let mut queue = VecDeque::new();
                    queue.push_back(queued);
                    pipes.insert(
                        room.clone(),
                        Pipe {
                            tail,
                            queued: queue,
                        },
                    );
                    true
                }
            }
        };
        if start {
            monoio::spawn(flush(self.clone(), room));
        }
        Ok(Committing {
            pdu,
            ticket,
            change,
            answer,
        })
    }
}

/// Commits the room's queued events chain by chain until none is left.
async fn flush(rooms: Rc<Rooms>, room: OwnedRoomId) {
    loop {
        let chain: Vec<Queued> = {
            let mut pipes = rooms.pipelines.pipes.borrow_mut();
            let Some(pipe) = pipes.get_mut(&room) else {
                return;
            };
            if pipe.queued.is_empty() {
                pipes.remove(&room);
                return;
            }
            let n = pipe.queued.len().min(MAX_CHAIN);
            pipe.queued.drain(..n).collect()
        };
        let mut chain = chain;
        let mut write = Write::new();
        for q in &mut chain {
            write.append(std::mem::take(&mut q.prepared.write));
        }
        let (removed, added) =
            net_extremities(chain.iter_mut().filter_map(|q| q.prepared.ext.take()));
        write = super::graph::extremity_rows(write, room.as_str(), removed, added);
        // Outbound federation: rows for the other servers, in the same
        // transaction (`rooms::destinations`).
        let timeline: Vec<&Pdu> = chain
            .iter()
            .filter(|q| q.prepared.head.is_some())
            .map(|q| q.prepared.pdu.as_ref())
            .collect();
        let (write, destinations) = match rooms.outbox(&room, &timeline, write).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "cannot find the room's servers");
                let e = match e {
                    RoomError::Db(e) => e,
                    other => DbError::Protocol(other.to_string()),
                };
                let rest = rooms
                    .pipelines
                    .pipes
                    .borrow_mut()
                    .remove(&room)
                    .map(|p| p.queued)
                    .unwrap_or_default();
                failed(&rooms, &room, chain.into_iter().chain(rest), &e);
                rooms.pipelines.committed.notify_all();
                continue;
            }
        };
        let result = rooms.writer.submit(write).await;
        match result {
            Ok(_) => {
                committed(&rooms, chain);
                crate::federation::sender::kick_destinations(destinations);
            }
            Err(e) => {
                tracing::warn!(room = %room, events = chain.len(), error = %e,
                    "room write failed; its events and those queued behind them fail");
                let rest = rooms
                    .pipelines
                    .pipes
                    .borrow_mut()
                    .remove(&room)
                    .map(|p| p.queued)
                    .unwrap_or_default();
                failed(&rooms, &room, chain.into_iter().chain(rest), &e);
            }
        }
        rooms.pipelines.committed.notify_all();
    }
}

fn committed(rooms: &Rooms, chain: Vec<Queued>) {
    for q in chain {
        let p = q.prepared;
        if let Some(key) = &p.txn {
            rooms.pipelines.txns.borrow_mut().remove(key);
        }
        rooms.events.put(p.pdu.clone());
        if p.pdu.kind.to_string() == "m.room.member" {
            rooms.forget_servers(&p.pdu.room_id);
            // Outliers (a joined room's state) change no current state.
            if p.head.is_some() && p.pdu.membership().as_deref() != Some("join") {
                crate::federation::device_lists::after_leave(
                    rooms.db.clone(),
                    p.pdu.room_id.clone(),
                    rooms.key.server_name.to_string(),
                );
            }
        }
        if let Some(head) = &p.head {
            rooms
                .heads
                .borrow_mut()
                .put(p.pdu.room_id.clone(), head.clone());
            // Push rules run now, off the request's path (soft-failed
            // events and outliers never notify).
            crate::push::engine::after_commit(head, &p.pdu, p.stream);
        }
        q.reply.send(Ok(()));
    }
}

fn failed(rooms: &Rooms, room: &OwnedRoomId, queued: impl Iterator<Item = Queued>, e: &DbError) {
    rooms
        .pipelines
        .failures
        .set(rooms.pipelines.failures.get() + 1);
    rooms.heads.borrow_mut().pop(room);
    let f = Failed {
        busy: matches!(e, DbError::Busy),
        message: e.to_string(),
    };
    for q in queued {
        let p = q.prepared;
        if let Some(key) = &p.txn {
            rooms.pipelines.txns.borrow_mut().remove(key);
        }
        rooms.events.pop(&p.pdu.event_id);
        q.reply.send(Err(f.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(removed: &[&str], added: &str) -> ExtremityChange {
        ExtremityChange {
            removed: removed.iter().map(|s| s.to_string()).collect(),
            added: added.into(),
        }
    }

    #[test]
    fn a_linear_chain_nets_to_one_delete_and_one_insert() {
        let (r, a) =
            net_extremities([ch(&["$0"], "$1"), ch(&["$1"], "$2"), ch(&["$2"], "$3")].into_iter());
        assert_eq!((r, a), (vec!["$0".to_owned()], vec!["$3".to_owned()]));
    }

    #[test]
    fn a_fork_closed_in_the_chain_keeps_only_the_survivors() {
        // $a and $b are extremities before; $1 follows $a; $2 (soft-failed
        // events have no change) closes $1 and $b.
        let (r, a) = net_extremities([ch(&["$a"], "$1"), ch(&["$1", "$b"], "$2")].into_iter());
        assert_eq!(r, vec!["$a".to_owned(), "$b".to_owned()]);
        assert_eq!(a, vec!["$2".to_owned()]);
        // A received event referencing nothing current adds an extremity.
        let (r, a) = net_extremities([ch(&["$a"], "$1"), ch(&["$old"], "$x")].into_iter());
        assert_eq!(r, vec!["$a".to_owned(), "$old".to_owned()]);
        assert_eq!(a, vec!["$1".to_owned(), "$x".to_owned()]);
    }
}

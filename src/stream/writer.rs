//! One shard's stream writer: hands out stream positions, learns when each
//! write has committed, and announces changes to every shard **in position
//! order, only once everything before them has committed**.
//!
//! Why the frontier: group commit keeps several batches in flight, so
//! position 5 may commit before position 4. A token saying "up to 5" must
//! mean 4 is durable too, and announcements must arrive in order — a shard
//! that saw 5 before 4 could hand a client a token past 4 while 4's
//! wake-up is still on its way, and the client would never get 4. So a
//! completed write waits in `pending` until every earlier position has
//! completed (or failed: a failed write leaves a permanent gap), and the
//! announcer sends batches in order; each receiving shard applies a batch
//! synchronously when the job starts, and jobs from one shard start in
//! enqueue order (mesh invariant).
//!
//! A write's caller is answered only after its change has been applied on
//! every shard ([`Ticket::publish`]): a client that sends and then syncs
//! (on any shard) sees its own event.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use crate::mesh::{BroadcastScope, MeshEndpoint};
use crate::primitives::Notify;

use super::change::{Change, Pos};
use super::notifier;
use super::token::ShardPos;

/// Tables holding rows numbered by a shard's persisted stream: each has
/// `stream_shard integer` and `stream_ordering bigint` columns. A shard's
/// counter resumes after the highest position in any of them. Add yours.
pub const POSITION_TABLES: &[&str] = &[
    "events",
    "graph_events",
    "receipts",
    "account_data",
    "to_device_txns",
    "remote_invites",
];

/// What the announcer sends to every shard.
#[derive(Debug)]
pub struct Batch {
    pub shard: usize,
    /// The writer's positions once this batch is applied.
    pub upto: ShardPos,
    pub changes: Vec<Change>,
}

/// A shard's stream writer (one per shard, `Rc`, never crosses threads).
pub struct StreamWriter {
    shard: usize,
    next: Cell<i64>,
    /// Allocated positions not yet contiguous-committed: `None` while in
    /// flight, `Some(changes)` once done.
    pending: RefCell<BTreeMap<i64, Option<Vec<Change>>>>,
    /// Every position <= this has completed.
    frontier: Cell<i64>,
    ephemeral: Cell<i64>,
    queue: RefCell<VecDeque<Change>>,
    queued: Notify,
    /// Every position <= this has been applied on every shard.
    announced: Cell<i64>,
    /// Every ephemeral position <= this has been applied on every shard.
    announced_ephemeral: Cell<i64>,
    announced_notify: Notify,
}

impl StreamWriter {
    /// `last_persisted`: the highest position this shard ever wrote;
    /// `boot_ms`: the start of the ephemeral counter (see `token.rs`).
    pub fn new(shard: usize, last_persisted: i64, boot_ms: i64) -> Rc<StreamWriter> {
        Rc::new(StreamWriter {
            shard,
            next: Cell::new(last_persisted + 1),
            pending: RefCell::new(BTreeMap::new()),
            frontier: Cell::new(last_persisted),
            ephemeral: Cell::new(boot_ms),
            queue: RefCell::new(VecDeque::new()),
            queued: Notify::new(),
            announced: Cell::new(last_persisted),
            announced_ephemeral: Cell::new(boot_ms),
            announced_notify: Notify::new(),
        })
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// This writer's positions as far as tokens may claim them.
    pub fn position(&self) -> ShardPos {
        ShardPos {
            persisted: self.frontier.get(),
            ephemeral: self.ephemeral.get(),
        }
    }

    /// Takes the next persisted position. Use it in the write, then call
    /// [`Ticket::publish`] after COMMIT (dropping the ticket, e.g. on an
    /// error, leaves a gap and lets later positions through).
    pub fn allocate(self: &Rc<Self>) -> Ticket {
        let pos = self.next.get();
        self.next.set(pos + 1);
        self.pending.borrow_mut().insert(pos, None);
        Ticket {
            writer: self.clone(),
            pos,
            done: false,
        }
    }

    /// Announces an in-memory change at the next ephemeral position; `make`
    /// builds the change from the position. Does not wait.
    pub fn publish_ephemeral(&self, make: impl FnOnce(i64) -> Vec<Change>) -> i64 {
        let pos = self.ephemeral.get() + 1;
        self.ephemeral.set(pos);
        self.queue.borrow_mut().extend(make(pos));
        self.queued.notify_all();
        pos
    }

    fn complete(&self, pos: i64, changes: Vec<Change>) {
        let mut pending = self.pending.borrow_mut();
        pending.insert(pos, Some(changes));
        let mut advanced = false;
        while let Some(entry) = pending.first_entry() {
            if entry.get().is_none() {
                break;
            }
            let (p, changes) = entry.remove_entry();
            self.frontier.set(p);
            self.queue.borrow_mut().extend(changes.unwrap_or_default());
            advanced = true;
        }
        if advanced {
            self.queued.notify_all();
        }
    }

    /// Waits until ephemeral position `pos` has been applied on every
    /// shard (e.g. `/sync`'s own presence change, so the token it returns
    /// covers it and the next sync is not woken by it).
    pub async fn wait_ephemeral(&self, pos: i64) {
        while self.announced_ephemeral.get() < pos {
            self.announced_notify.notified().await;
        }
    }

    async fn wait_announced(&self, pos: i64) {
        while self.announced.get() < pos {
            self.announced_notify.notified().await;
        }
    }

    /// The announcer task: sends queued changes to every shard in order,
    /// one batch at a time (while a batch is in flight the next one grows,
    /// so announcing costs one mesh round trip per batch, not per event).
    /// Runs until the mesh closes.
    pub async fn run_announcer(self: Rc<Self>, mesh: Rc<MeshEndpoint>) {
        loop {
            if mesh.is_closed() {
                return;
            }
            if self.queue.borrow().is_empty()
                && self.announced.get() >= self.frontier.get()
                && self.announced_ephemeral.get() >= self.ephemeral.get()
            {
                self.queued.notified().await;
                continue;
            }
            let changes: Vec<Change> = self.queue.borrow_mut().drain(..).collect();
            let upto = self.position();
            let batch = Arc::new(Batch {
                shard: self.shard,
                upto,
                changes,
            });
            let results = mesh
                .broadcast_wait(BroadcastScope::All, move || {
                    let batch = batch.clone();
                    async move { notifier::apply_local(&batch) }
                })
                .await;
            for (shard, r) in results {
                if let Err(e) = r {
                    tracing::debug!(shard, error = %e, "announcement not delivered");
                }
            }
            // Even undelivered (the mesh is closing): nobody may wait forever.
            self.announced.set(upto.persisted);
            self.announced_ephemeral.set(upto.ephemeral);
            self.announced_notify.notify_all();
        }
    }

    /// Stops waiters on shutdown (the announcer is gone).
    pub fn release_all(&self) {
        self.announced.set(i64::MAX);
        self.announced_ephemeral.set(i64::MAX);
        self.announced_notify.notify_all();
        self.queued.notify_all();
    }
}

/// A persisted position, allocated and not yet published.
pub struct Ticket {
    writer: Rc<StreamWriter>,
    pos: i64,
    done: bool,
}

impl Ticket {
    pub fn pos(&self) -> i64 {
        self.pos
    }

    /// Marks the write committed and waits until its changes (and every
    /// earlier position's) have been applied on every shard.
    pub async fn publish(mut self, changes: Vec<Change>) {
        debug_assert!(changes.iter().all(|c| c.pos() == Pos::Persisted(self.pos)));
        self.done = true;
        let writer = self.writer.clone();
        writer.complete(self.pos, changes);
        writer.wait_announced(self.pos).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            // The write failed (or its outcome is unknown): leave a gap.
            self.writer.complete(self.pos, Vec::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Rc<StreamWriter> {
        StreamWriter::new(0, 10, 1000)
    }

    #[test]
    fn frontier_waits_for_earlier_positions() {
        let w = writer();
        let a = w.allocate();
        let b = w.allocate();
        assert_eq!((a.pos(), b.pos()), (11, 12));
        w.complete(12, Vec::new());
        std::mem::forget(b);
        assert_eq!(w.position().persisted, 10, "12 done but 11 in flight");
        drop(a); // failed write: a gap
        assert_eq!(w.position().persisted, 12);
    }

    #[test]
    fn ephemeral_positions_grow_from_boot_time() {
        let w = writer();
        assert_eq!(w.publish_ephemeral(|_| Vec::new()), 1001);
        assert_eq!(w.position().ephemeral, 1001);
    }
}

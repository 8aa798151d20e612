//! `PUT /send` transaction ids (`txn_ids`): the per-shard memory that
//! answers "never seen" without a query ([`TxnMemory`]), and expiry.
//!
//! A txn id only has to outlive a client's retries of one request (Synapse
//! keeps them 30 minutes); hearth keeps them [`KEEP_HOURS`], across restarts,
//! then deletes them so the table does not grow with every message sent.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::time::Duration;

use lru::LruCache;

use super::pipeline::TxnKey;
use crate::db::{DbError, Pool};

/// How long a transaction id stays idempotent.
pub const KEEP_HOURS: i64 = 24;
/// How often shard 0 deletes expired ids.
pub const PERIOD: Duration = Duration::from_secs(3600);

/// Deletes transaction ids older than `keep_hours`; returns how many.
pub async fn expire(db: &Pool, keep_hours: i64) -> Result<u64, DbError> {
    db.execute(
        "DELETE FROM txn_ids WHERE created_at < now() - make_interval(hours => $1::int)",
        &[&(keep_hours.clamp(0, i64::from(i32::MAX)) as i32)],
    )
    .await
}

/// The expiry loop (run on one shard). Never ends; errors are logged.
pub async fn run_expiry(db: Pool) {
    loop {
        monoio::time::sleep(PERIOD).await;
        match expire(&db, KEEP_HOURS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired transaction ids"),
            Err(e) => tracing::warn!(error = %e, "expiring transaction ids failed"),
        }
    }
}

/// What the shard knows of one device's transaction ids.
enum DeviceTxns {
    /// Another send is loading them; meanwhile sends ask the database.
    /// `noted`: hashes of txns enqueued since the load began.
    Loading { noted: Vec<u64> },
    /// Every txn id of the device that may be in `txn_ids` (rows written
    /// before the load, txns pending then, every txn enqueued since), as
    /// hashes of `(room, txn)`.
    Loaded(HashSet<u64>),
    /// Too many to keep: sends ask the database.
    TooMany,
}

/// Whether a txn id may already have an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Certainly not: no event was ever sent with it (that the database
    /// keeps). Build the event without a query.
    No,
    /// Perhaps (or unknown): the database answers.
    Maybe,
}

/// Per-shard memory of devices' transaction ids, so the idempotency check
/// of a `PUT /send` needs no query in the usual case, a txn id never seen.
///
/// Why a set of hashes: only a negative answer is taken from memory, so a
/// collision costs one query (the database is asked for the event id), and
/// eight bytes per txn id is cheap enough to keep a day's worth for an
/// ordinary device. The set is *complete* for its device: it holds the
/// hash of every txn id that may have a row. A txn id gets one when its
/// event is enqueued, before the COMMIT, so a failed or unknown commit
/// leaves a false "maybe", never a false "no". Rows deleted by expiry or a
/// purge leave false "maybe"s as well.
///
/// Architecture Invariant: only the room's owner shard writes a room's
/// `txn_ids` rows, so a shard's memory plus what was in the database when
/// it loaded is everything.
pub struct TxnMemory {
    devices: RefCell<LruCache<(String, String), DeviceTxns>>,
    /// Hashes held over all devices.
    held: Cell<usize>,
    max_held: usize,
    max_per_device: usize,
}

/// Devices remembered per shard.
const DEVICES: usize = 16 * 1024;
/// Hashes remembered per shard (~32 MB at most).
const MAX_HELD: usize = 2_000_000;
/// A device with more txn ids than this (in a day) is asked about in
/// the database each time.
const MAX_PER_DEVICE: usize = 200_000;

impl Default for TxnMemory {
    fn default() -> Self {
        TxnMemory::with_limits(DEVICES, MAX_HELD, MAX_PER_DEVICE)
    }
}

fn txn_hash(room: &str, txn: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    room.hash(&mut h);
    txn.hash(&mut h);
    h.finish()
}

impl TxnMemory {
    pub fn with_limits(devices: usize, max_held: usize, max_per_device: usize) -> Self {
        TxnMemory {
            devices: RefCell::new(LruCache::new(
                NonZeroUsize::new(devices.max(1)).unwrap_or(NonZeroUsize::MIN),
            )),
            held: Cell::new(0),
            max_held,
            max_per_device,
        }
    }

    /// Whether `(room, txn)` of the device may have an event. The first
    /// ask about a device loads its txn ids; `pending` gives the device's
    /// `(room, txn)`s enqueued and not yet committed or failed.
    pub async fn seen(
        &self,
        db: &Pool,
        key: &TxnKey,
        pending: impl FnOnce() -> Vec<(String, String)>,
    ) -> Seen {
        let (user, device, room, txn) = key;
        let dev = (user.clone(), device.clone());
        let hash = txn_hash(room, txn);
        match self.devices.borrow_mut().get(&dev) {
            Some(DeviceTxns::Loaded(set)) => {
                return if set.contains(&hash) {
                    Seen::Maybe
                } else {
                    Seen::No
                };
            }
            Some(_) => return Seen::Maybe,
            None => {}
        }
        let mut set: HashSet<u64> = pending()
            .iter()
            .map(|(room, txn)| txn_hash(room, txn))
            .collect();
        self.put(dev.clone(), DeviceTxns::Loading { noted: Vec::new() });
        let rows = db
            .query(
                "SELECT room_id, txn_id FROM txn_ids WHERE user_id = $1 AND device_id = $2",
                &[&user.as_str(), &device.as_str()],
            )
            .await;
        let loaded = rows.and_then(|rows| {
            for r in &rows {
                set.insert(txn_hash(r.get::<&str>(0)?, r.get::<&str>(1)?));
            }
            Ok(())
        });
        let mut devices = self.devices.borrow_mut();
        // Evicted meanwhile: nothing to complete (the next ask loads again).
        let Some(DeviceTxns::Loading { noted }) = devices.pop(&dev) else {
            return Seen::Maybe;
        };
        drop(devices);
        if let Err(e) = loaded {
            tracing::debug!(error = %e, "loading a device's txn ids failed; asking per send");
            return Seen::Maybe;
        }
        set.extend(noted);
        let answer = if set.contains(&hash) {
            Seen::Maybe
        } else {
            Seen::No
        };
        if set.len() > self.max_per_device {
            self.put(dev, DeviceTxns::TooMany);
        } else {
            self.held.set(self.held.get() + set.len());
            self.put(dev, DeviceTxns::Loaded(set));
        }
        answer
    }

    /// Records a txn id whose event was just enqueued.
    pub fn note(&self, key: &TxnKey) {
        let (user, device, room, txn) = key;
        let hash = txn_hash(room, txn);
        let dev = (user.clone(), device.clone());
        let mut devices = self.devices.borrow_mut();
        let full = match devices.get_mut(&dev) {
            Some(DeviceTxns::Loading { noted }) => {
                noted.push(hash);
                false
            }
            Some(DeviceTxns::Loaded(set)) => {
                if set.insert(hash) {
                    self.held.set(self.held.get() + 1);
                }
                set.len() > self.max_per_device
            }
            // Not remembered: a later load reads its row (or, if the
            // commit is still pending then, takes it from `pending`).
            Some(DeviceTxns::TooMany) | None => false,
        };
        if full {
            if let Some(DeviceTxns::Loaded(set)) = devices.put(dev, DeviceTxns::TooMany) {
                self.held.set(self.held.get().saturating_sub(set.len()));
            }
        }
        drop(devices);
        self.shrink();
    }

    /// Stores an entry, accounting for the one it replaces or evicts.
    fn put(&self, dev: (String, String), entry: DeviceTxns) {
        let old = self.devices.borrow_mut().push(dev, entry);
        if let Some((_, DeviceTxns::Loaded(set))) = old {
            self.held.set(self.held.get().saturating_sub(set.len()));
        }
        self.shrink();
    }

    /// Forgets least recently used devices while over the budget.
    fn shrink(&self) {
        while self.held.get() > self.max_held {
            let Some((_, old)) = self.devices.borrow_mut().pop_lru() else {
                self.held.set(0);
                return;
            };
            if let DeviceTxns::Loaded(set) = old {
                self.held.set(self.held.get().saturating_sub(set.len()));
            }
        }
    }

    /// Hashes held (tests, metrics).
    pub fn held(&self) -> usize {
        self.held.get()
    }
}

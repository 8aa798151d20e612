//! hearth's replication stream (docs/ARCHITECTURE.md "Streams and sync"):
//! each shard is a stream writer with its own positions ([`writer`]); a
//! sync token is the vector of every shard's positions ([`token`]); after
//! a write commits, its writer announces a [`Change`] to every shard in
//! position order, and each shard's [`notifier`] updates its caches and
//! wakes the parked `/sync`s of the affected local users.

pub mod change;
pub mod last_seen;
pub mod notifier;
pub mod token;
pub mod writer;

pub use change::{Change, EventChange, Pos, PresenceUpdate, RoomChange, UserChange};
pub use notifier::Notifier;
pub use token::{ShardPos, StreamToken, TokenError};
pub use writer::{StreamWriter, Ticket};

use std::rc::Rc;

use crate::db::{DbError, Pool};

/// Opens this shard's stream writer and notifier, resumed from the
/// database, and installs the notifier for announcement jobs. Start the
/// writer's [`StreamWriter::run_announcer`] once the mesh receiver runs.
pub async fn open(
    db: &Pool,
    shard: usize,
    n_shards: usize,
) -> Result<(Rc<StreamWriter>, Rc<Notifier>), DbError> {
    let persisted = notifier::persisted_positions(db, n_shards).await?;
    let boot_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
    let last = persisted.get(shard).copied().unwrap_or(0);
    let stream = StreamWriter::new(shard, last, boot_ms);
    let notifier = Rc::new(Notifier::load(db, shard, n_shards, &persisted).await?);
    notifier::install(notifier.clone());
    Ok((stream, notifier))
}

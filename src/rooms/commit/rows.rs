//! The [`Rows`] kinds of [`Rooms::commit`](super::Rooms::commit): a
//! batch's timeline events and txn ids go as one statement each
//! (`db::bulk`). Both are plain inserts that read nothing and that no
//! constraint ties to the batch's other rows, so merging them is safe.

use crate::db::types::oid::{BOOL, INT4, INT8, JSONB, TEXT};
use crate::db::Rows;

/// A timeline event's `events` row, in this column order.
pub static EVENT_ROWS: Rows = Rows {
    sql: "INSERT INTO events (stream_ordering, room_id, event_id, sender, type, json, \
          state_key, depth, snapshot_id, stream_shard, prev_state_event_id, room_snapshot, \
          resolved) \
          SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    columns: &[
        INT8, TEXT, TEXT, TEXT, TEXT, JSONB, TEXT, INT8, INT8, INT4, TEXT, INT8, BOOL,
    ],
};

/// A local send's `txn_ids` row: user, device, room, txn id, event id.
pub static TXN_ROWS: Rows = Rows {
    sql: "INSERT INTO txn_ids (user_id, device_id, room_id, txn_id, event_id) \
          SELECT * FROM unnest($1, $2, $3, $4, $5)",
    columns: &[TEXT, TEXT, TEXT, TEXT, TEXT],
};

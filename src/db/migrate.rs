//! Schema migrations, embedded in the binary and applied at start.
//!
//! All pending migrations run in ONE transaction holding a transaction-level
//! advisory lock, so two hearth processes starting at once serialize: the
//! second waits, then finds the schema current. Each applied version is
//! recorded in `schema_version`. A database whose schema is newer than the
//! newest migration this binary has is refused (an old binary must not
//! write to a schema it does not understand).

use super::conn::Connection;
use super::error::DbError;

/// One embedded migration, `migrations/NNNN_name.sql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this binary knows, in order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "accounts",
        sql: include_str!("../../migrations/0002_accounts.sql"),
    },
    Migration {
        version: 3,
        name: "rooms",
        sql: include_str!("../../migrations/0003_rooms.sql"),
    },
    Migration {
        version: 4,
        name: "timeline",
        sql: include_str!("../../migrations/0004_timeline.sql"),
    },
    Migration {
        version: 5,
        name: "directory",
        sql: include_str!("../../migrations/0005_directory.sql"),
    },
    Migration {
        version: 6,
        name: "ephemeral",
        sql: include_str!("../../migrations/0006_ephemeral.sql"),
    },
    Migration {
        version: 7,
        name: "sync",
        sql: include_str!("../../migrations/0007_sync.sql"),
    },
    Migration {
        version: 8,
        name: "txn_expiry",
        sql: include_str!("../../migrations/0008_txn_expiry.sql"),
    },
    Migration {
        version: 9,
        name: "e2ee_keys",
        sql: include_str!("../../migrations/0009_e2ee_keys.sql"),
    },
    Migration {
        version: 10,
        name: "push",
        sql: include_str!("../../migrations/0010_push.sql"),
    },
    Migration {
        version: 11,
        name: "event_graph",
        sql: include_str!("../../migrations/0011_event_graph.sql"),
    },
    Migration {
        version: 12,
        name: "cross_signing_backup",
        sql: include_str!("../../migrations/0012_cross_signing_backup.sql"),
    },
    Migration {
        version: 13,
        name: "media",
        sql: include_str!("../../migrations/0013_media.sql"),
    },
    Migration {
        version: 14,
        name: "push_actions",
        sql: include_str!("../../migrations/0014_push_actions.sql"),
    },
    Migration {
        version: 16,
        name: "token_hashes",
        sql: include_str!("../../migrations/0016_token_hashes.sql"),
    },
    Migration {
        version: 17,
        name: "events_resolved",
        sql: include_str!("../../migrations/0017_events_resolved.sql"),
    },
    Migration {
        version: 18,
        name: "openid",
        sql: include_str!("../../migrations/0018_openid.sql"),
    },
    Migration {
        version: 19,
        name: "federation_inbound",
        sql: include_str!("../../migrations/0019_federation_inbound.sql"),
    },
    Migration {
        version: 20,
        name: "remote_invites",
        sql: include_str!("../../migrations/0020_remote_invites.sql"),
    },
    Migration {
        version: 21,
        name: "federation_outbox",
        sql: include_str!("../../migrations/0021_federation_outbox.sql"),
    },
    Migration {
        version: 22,
        name: "backfill",
        sql: include_str!("../../migrations/0022_backfill.sql"),
    },
    Migration {
        version: 23,
        name: "device_lists",
        sql: include_str!("../../migrations/0023_device_lists.sql"),
    },
    Migration {
        version: 24,
        name: "partial_state",
        sql: include_str!("../../migrations/0024_partial_state.sql"),
    },
    Migration {
        version: 25,
        name: "remote_invite_stream",
        sql: include_str!("../../migrations/0025_remote_invite_stream.sql"),
    },
    Migration {
        version: 27,
        name: "admin_api",
        sql: include_str!("../../migrations/0027_admin_api.sql"),
    },
    Migration {
        version: 30,
        name: "remote_thumbnails",
        sql: include_str!("../../migrations/0030_remote_thumbnails.sql"),
    },
    Migration {
        version: 31,
        name: "room_extremities",
        sql: include_str!("../../migrations/0031_room_extremities.sql"),
    },
    Migration {
        version: 32,
        name: "txn_ids_brin",
        sql: include_str!("../../migrations/0032_txn_ids_brin.sql"),
    },
    Migration {
        version: 33,
        name: "push_actions_by_set",
        sql: include_str!("../../migrations/0033_push_actions_by_set.sql"),
    },
];

/// Key of the advisory lock serializing migrators (arbitrary, fixed:
/// "hearth" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x6865_6172_7468;

/// What `migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateReport {
    /// Schema version found.
    pub from: i64,
    /// Schema version now.
    pub to: i64,
}

/// Newest version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Bring the database up to date with [`MIGRATIONS`].
pub async fn migrate(conn: &Connection) -> Result<MigrateReport, DbError> {
    migrate_with(conn, MIGRATIONS).await
}

/// Current schema version (0 for an empty database).
pub async fn schema_version(conn: &Connection) -> Result<i64, DbError> {
    let exists: bool = conn
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .get(0)?;
    if !exists {
        return Ok(0);
    }
    conn.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .get(0)
}

/// Apply `migrations` (sorted by version) as [`migrate`] does.
pub async fn migrate_with(
    conn: &Connection,
    migrations: &[Migration],
) -> Result<MigrateReport, DbError> {
    debug_assert!(migrations.windows(2).all(|w| w[0].version < w[1].version));
    let known = migrations.last().map_or(0, |m| m.version);
    let tx = conn.begin().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    // Read after taking the lock: under READ COMMITTED each statement sees
    // what a migrator that held the lock before us committed.
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .get(0)?;
    // Every applied version, not just the highest: a migration numbered
    // below one already applied (branches landing out of order) still runs.
    let mut applied = std::collections::BTreeSet::new();
    if exists {
        for row in tx.query("SELECT version FROM schema_version", &[]).await? {
            applied.insert(row.get::<i64>(0)?);
        }
    }
    let from: i64 = applied.last().copied().unwrap_or(0);
    if from > known {
        tx.rollback().await?;
        return Err(DbError::SchemaTooNew { found: from, known });
    }
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        let wrap = |e: DbError| DbError::Migration {
            version: m.version,
            name: m.name,
            source: Box::new(e),
        };
        tracing::info!(target: "hearth::db", version = m.version, name = m.name, "applying migration");
        tx.batch_execute(m.sql).await.map_err(wrap)?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(wrap)?;
    }
    tx.commit().await?;
    Ok(MigrateReport {
        from,
        to: known.max(from),
    })
}

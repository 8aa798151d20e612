//! Database set-up at process start, on the main thread before any shard runs:
//! pick the server (`database.url`, or hearth's own embedded cluster under
//! `data_dir`), then bring the schema up to date once.
//!
//! Blocking is fine here — no shard exists yet. Migrations run on a throwaway
//! monoio runtime on the main thread with our own wire client.

use std::time::Duration;

use crate::config::{Config, IoDriver};
use crate::db::cluster::{Cluster, ClusterConfig, ClusterError};
use crate::db::migrate::{self, MigrateReport};
use crate::db::{ConnectConfig, Connection, DbError, Host, PoolConfig};
use crate::shard::driver::build_runtime;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    // The inner error is in the message and deliberately not a `source`:
    // `{e:#}` would print it twice (once per chain link).
    #[error("embedded PostgreSQL: {0}")]
    Cluster(ClusterError),
    #[error("database: {0}")]
    Db(DbError),
    #[error("cannot build a runtime for migrations: {0}")]
    Runtime(std::io::Error),
}

impl From<ClusterError> for SetupError {
    fn from(e: ClusterError) -> Self {
        SetupError::Cluster(e)
    }
}

impl From<DbError> for SetupError {
    fn from(e: DbError) -> Self {
        SetupError::Db(e)
    }
}

/// The database hearth talks to. Holding it keeps the embedded cluster (if
/// any) running; dropping it stops that cluster cleanly.
pub struct Database {
    pub connect: ConnectConfig,
    pub pool: PoolConfig,
    pub migrated: MigrateReport,
    cluster: Option<Cluster>,
}

impl Database {
    /// Whether hearth runs its own cluster (no `database.url`).
    pub fn is_embedded(&self) -> bool {
        self.cluster.is_some()
    }

    /// Stop the embedded cluster (if any) now, logging a failure.
    pub fn shutdown(self) {
        if let Some(c) = self.cluster {
            if let Err(e) = c.stop() {
                tracing::warn!(error = %e, "embedded PostgreSQL did not stop cleanly");
            }
        }
    }
}

/// Connections the embedded cluster must accept: every shard's pool, plus
/// room for migrations, admin tools and a restart overlapping old backends.
fn max_connections(shards: usize, pool_size: usize) -> usize {
    shards * pool_size * 2 + 20
}

/// Choose the server, start it if it is ours, and migrate the schema.
pub fn prepare(config: &Config) -> Result<Database, SetupError> {
    let shards = config.shard_count();
    let (connect, cluster) = match &config.database.url {
        Some(url) => {
            let mut c = ConnectConfig::from_url(url)?;
            // DNS resolution blocks: do it now, never on a shard.
            c.resolve()?;
            (c, None)
        }
        None => {
            let mut cc = ClusterConfig::new(&config.data_dir);
            cc.run_as = Some(config.database.run_as.clone());
            cc.settings.push((
                "max_connections".into(),
                max_connections(shards, config.database.pool_size).to_string(),
            ));
            tracing::info!(data_dir = %config.data_dir.display(), "starting embedded PostgreSQL");
            let cluster = Cluster::ensure(cc)?;
            let info = cluster.info().clone();
            let c = ConnectConfig {
                host: Host::Unix(info.socket_dir.clone()),
                port: info.port,
                user: info.user.clone(),
                dbname: info.dbname.clone(),
                application_name: Some("hearth".into()),
                ..ConnectConfig::default()
            };
            tracing::info!(socket = %info.socket_path().display(), "embedded PostgreSQL ready");
            (c, Some(cluster))
        }
    };
    let migrated = run_migrations(&connect, config.io_driver)?;
    if migrated.from != migrated.to {
        tracing::info!(from = migrated.from, to = migrated.to, "schema migrated");
    }
    let pool = PoolConfig {
        size: config.database.pool_size,
        max_in_flight: config.database.max_queued,
        ..PoolConfig::default()
    };
    Ok(Database {
        connect,
        pool,
        migrated,
        cluster,
    })
}

/// Runs on the configured IO driver, like the shards, so `io_driver = "epoll"`
/// means no io_uring anywhere in the process.
fn run_migrations(connect: &ConnectConfig, driver: IoDriver) -> Result<MigrateReport, SetupError> {
    let mut rt = build_runtime(driver).map_err(SetupError::Runtime)?.runtime;
    rt.block_on(async {
        // The server may still be finishing recovery right after a restart.
        let mut delay = Duration::from_millis(50);
        let conn = loop {
            match Connection::connect(connect).await {
                Ok(c) => break c,
                Err(e) if delay < Duration::from_secs(5) && e.is_connection_lost() => {
                    monoio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(SetupError::Db(e)),
            }
        };
        Ok(migrate::migrate(&conn).await?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_cluster_allows_every_pool() {
        assert!(max_connections(64, 4) >= 64 * 4 + 20);
    }
}

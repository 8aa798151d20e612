//! PostgreSQL: our own pipelined wire client, pool, group commit, migrations,
//! and the embedded cluster hearth runs when no `database.url` is set.
//!
//! Everything here runs on a shard's single-threaded monoio runtime (`Rc`,
//! `RefCell`, never blocking), speaking the protocol through the
//! `postgres-protocol` crate's message codecs.

mod auth;
pub mod bulk;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod conn;
pub mod copy;
pub mod error;
pub mod group_commit;
pub(crate) mod local;
pub mod migrate;
pub mod pool;
pub mod setup;
mod statement;
#[doc(hidden)]
pub mod testing;
pub mod transaction;
pub mod types;
mod wire;

pub use bulk::Rows;
pub use config::{ConnectConfig, Host};
pub use conn::{Connection, QueryResult};
pub use copy::CopyText;
pub use error::DbError;
pub use group_commit::{GroupCommit, GroupCommitConfig, GroupCommitStats, Write};
pub use pool::{Pool, PoolConfig, PoolUsage};

pub use transaction::Transaction;
pub use types::{Column, FromSql, Row, SimpleRow, SqlType, SqlValue, ToSql};
#[doc(hidden)]
pub use wire::BackendInspector;

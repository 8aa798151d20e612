//! `hearth register-user`: create an account from the command line, talking
//! to the database directly (the embedded cluster, or `database.url`), as
//! Synapse's `register_new_matrix_user` lets admins do when registration is
//! closed. Runs on the main thread; there are no shards to protect.

use crate::config::Config;
use crate::db::setup::{self as db_setup, SetupError};
use crate::db::{Connection, DbError};
use crate::shard::driver::build_runtime;

use super::{password, username, AuthError};

#[derive(Debug, thiserror::Error)]
pub enum RegisterUserError {
    #[error("invalid user name: {0}")]
    InvalidName(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("the password is empty or too long")]
    BadPassword,
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Other(String),
}

impl From<AuthError> for RegisterUserError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidUsername(m) => RegisterUserError::InvalidName(m),
            other => RegisterUserError::Other(other.to_string()),
        }
    }
}

/// Create `name` (a localpart or `@local:server_name`) with `password`.
/// Returns the full user id.
pub fn register_user(
    config: &Config,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<String, RegisterUserError> {
    let server = config.server_name.as_str();
    let localpart = match name.strip_prefix('@') {
        Some(rest) => match rest.split_once(':') {
            Some((l, s)) if s == server => l,
            _ => {
                return Err(RegisterUserError::InvalidName(format!(
                    "{name} is not a user id on {server}"
                )))
            }
        },
        None => name,
    };
    let user_id = username::new_user_id(localpart, server)?;
    if password.is_empty() || password.len() > password::MAX_PASSWORD_LEN {
        return Err(RegisterUserError::BadPassword);
    }
    let hash = password::hash_blocking(password)?;
    let database = db_setup::prepare(config)?;
    let result = (|| {
        let mut rt = build_runtime(config.io_driver)
            .map_err(|e| RegisterUserError::Other(format!("cannot build a runtime: {e}")))?
            .runtime;
        rt.block_on(async {
            let conn = Connection::connect(&database.connect).await?;
            let n = conn
                .execute(
                    "INSERT INTO users (user_id, password_hash, admin, created_ts, displayname) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO NOTHING",
                    &[
                        &user_id.as_str(),
                        &hash,
                        &admin,
                        &crate::primitives::unix_ms_i64(),
                        &localpart,
                    ],
                )
                .await?;
            if n == 0 {
                return Err(RegisterUserError::Exists(user_id.to_string()));
            }
            Ok(user_id.to_string())
        })
    })();
    database.shutdown();
    result
}

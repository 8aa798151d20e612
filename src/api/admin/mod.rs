//! The admin API: Synapse's `/_synapse/admin/...` paths and answers for
//! its most used calls, so Synapse's admin tools work against hearth.
//! Served on client listeners, as Synapse does. Every call but
//! `server_version` is for server admins (`users.admin`; `hearth
//! register-user --admin` makes one): others get 403 `M_FORBIDDEN` "You
//! are not a server admin", as from Synapse.
//!
//! One module per area: `users`, `rooms` (listing, deletion, history
//! purges), `tokens` (registration tokens), `reports` (event reports).
//! The work is in the domain modules (`auth::admin`,
//! `auth::registration_tokens`, `rooms::admin`, `rooms::purge`,
//! `rooms::reports`); these handlers only parse and shape.

mod reports;
mod rooms;
mod tokens;
mod users;

use crate::auth::{self, Requester};
use crate::http::{MatrixError, Request, Router};
use crate::shard_state::ShardState;

/// The requester, if a server admin.
async fn require_admin(state: &ShardState, req: &Request) -> Result<Requester, MatrixError> {
    let me = auth::require_user(state, req).await?;
    if !auth::admin::is_admin(&state.db, &me.user_id).await? {
        return Err(MatrixError::forbidden("You are not a server admin"));
    }
    Ok(me)
}

/// A non-negative integer query parameter (Synapse's wording on errors).
fn uint_param(req: &Request, name: &str, default: i64) -> Result<i64, MatrixError> {
    match req.query_param(name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(n),
            _ => Err(MatrixError::invalid_param(format!(
                "Query parameter {name} must be a positive integer."
            ))),
        },
    }
}

/// A `true`/`false` query parameter.
fn bool_param(req: &Request, name: &str) -> Result<Option<bool>, MatrixError> {
    match req.query_param(name).as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(MatrixError::invalid_param(format!(
            "Boolean query parameter {name:?} must be one of ['true', 'false']"
        ))),
    }
}

/// `dir=f|b`; `Ok(true)` for `b`.
fn dir_param(req: &Request, default_backwards: bool) -> Result<bool, MatrixError> {
    match req.query_param("dir").as_deref() {
        None => Ok(default_backwards),
        Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(_) => Err(MatrixError::invalid_param(
            "Query parameter 'dir' must be one of ['b', 'f']",
        )),
    }
}

/// An id for a polled task (deletion, purge): Synapse's are 16 letters.
fn task_id() -> Result<String, MatrixError> {
    Ok(auth::tokens::random_string(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        16,
    )?)
}

/// Registers the admin routes (called by the client router).
pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    let r = users::routes(r);
    let r = rooms::routes(r);
    let r = tokens::routes(r);
    reports::routes(r)
}

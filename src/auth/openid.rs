//! OpenID tokens (client-server "OpenID", server-server "OpenID"): a user
//! asks for a short-lived token and hands it to a third party (an
//! integration manager, a widget), which asks us whose it is through
//! federation's `/openid/userinfo`. The token says nothing but the user id
//! and is useless for the client API.

use super::tokens::{hash_token, random_string};
use super::AuthError;
use crate::db::Pool;

/// How long a token is valid (Synapse: one hour).
pub const VALIDITY_MS: i64 = 3_600_000;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn db(e: crate::db::DbError) -> AuthError {
    AuthError::Db(std::sync::Arc::new(e))
}

/// Issues a token for `user`, valid for [`VALIDITY_MS`] from `now_ms`.
/// Expired tokens are dropped on the way.
pub async fn issue(pool: &Pool, user: &str, now_ms: i64) -> Result<String, AuthError> {
    let token = random_string(ALNUM, 32)?;
    pool.execute(
        "DELETE FROM openid_tokens WHERE expires_ts <= $1",
        &[&now_ms],
    )
    .await
    .map_err(db)?;
    pool.execute(
        "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)",
        &[&hash_token(&token), &user, &(now_ms + VALIDITY_MS)],
    )
    .await
    .map_err(db)?;
    Ok(token)
}

/// The user a token was issued to, if it is known and not expired.
pub async fn user_of(pool: &Pool, token: &str, now_ms: i64) -> Result<Option<String>, AuthError> {
    let row = pool
        .query_opt(
            "SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2",
            &[&hash_token(token), &now_ms],
        )
        .await
        .map_err(db)?;
    row.map(|r| r.get::<String>(0).map_err(db)).transpose()
}

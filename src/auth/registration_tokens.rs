//! Registration tokens an admin manages (Synapse's
//! `/_synapse/admin/v1/registration_tokens`), checked by the
//! `m.login.registration_token` stage beside `registration.token` from the
//! config. Schema: `migrations/0027_admin_api.sql`.
//!
//! A use is counted when the stage succeeds (Synapse counts it `pending`
//! then, `completed` when the account exists); hearth has no pending state
//! across requests, so `pending` stays 0 and a use is spent even if the
//! registration then fails for another reason.

use super::{tokens, AuthError};
use crate::db::error::UNIQUE_VIOLATION;
use crate::db::{Pool, Row};

/// Characters of a token (spec: `[A-Za-z0-9._~-]`, at most 64).
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<i32>,
    pub pending: i32,
    pub completed: i32,
    pub expiry_time: Option<i64>,
}

impl RegistrationToken {
    pub fn is_valid(&self, now_ms: i64) -> bool {
        self.uses_allowed
            .is_none_or(|n| self.completed + self.pending < n)
            && self.expiry_time.is_none_or(|t| t > now_ms)
    }
}

const COLS: &str = "token, uses_allowed, pending, completed, expiry_time";

fn token_of(r: &Row) -> Result<RegistrationToken, AuthError> {
    Ok(RegistrationToken {
        token: r.get(0)?,
        uses_allowed: r.get(1)?,
        pending: r.get(2)?,
        completed: r.get(3)?,
        expiry_time: r.get(4)?,
    })
}

/// Whether `s` may be a token (spec "Token-authenticated registration").
pub fn valid_token_syntax(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| TOKEN_CHARS.contains(&b))
}

/// `valid`: `Some(true)` only usable ones, `Some(false)` only spent or
/// expired ones, `None` all (Synapse's `?valid=`).
pub async fn list(
    pool: &Pool,
    valid: Option<bool>,
    now_ms: i64,
) -> Result<Vec<RegistrationToken>, AuthError> {
    let rows = pool
        .query(&format!("SELECT {COLS} FROM registration_tokens"), &[])
        .await?;
    let all = rows.iter().map(token_of).collect::<Result<Vec<_>, _>>()?;
    Ok(all
        .into_iter()
        .filter(|t| valid.is_none_or(|v| t.is_valid(now_ms) == v))
        .collect())
}

pub async fn get(pool: &Pool, token: &str) -> Result<Option<RegistrationToken>, AuthError> {
    let row = pool
        .query_opt(
            &format!("SELECT {COLS} FROM registration_tokens WHERE token = $1"),
            &[&token],
        )
        .await?;
    row.as_ref().map(token_of).transpose()
}

/// A new token: `token` given, or `length` random characters. `Ok(None)`:
/// the given token exists already.
pub async fn create(
    pool: &Pool,
    token: Option<String>,
    length: usize,
    uses_allowed: Option<i32>,
    expiry_time: Option<i64>,
) -> Result<Option<RegistrationToken>, AuthError> {
    let generated = token.is_none();
    for _ in 0..if generated { 3 } else { 1 } {
        let t = match &token {
            Some(t) => t.clone(),
            None => tokens::random_string(TOKEN_CHARS, length)?,
        };
        let res = pool
            .execute(
                "INSERT INTO registration_tokens (token, uses_allowed, expiry_time) \
                 VALUES ($1, $2, $3)",
                &[&t, &uses_allowed, &expiry_time],
            )
            .await;
        match res {
            Ok(_) => {
                return Ok(Some(RegistrationToken {
                    token: t,
                    uses_allowed,
                    pending: 0,
                    completed: 0,
                    expiry_time,
                }))
            }
            Err(e) if e.code() == Some(UNIQUE_VIOLATION) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if generated {
        Err(AuthError::Internal(
            "could not generate a unique registration token".into(),
        ))
    } else {
        Ok(None)
    }
}

/// A field to change: absent (keep), `null` (unlimited/never) or a value.
pub type Change<T> = Option<Option<T>>;

pub async fn update(
    pool: &Pool,
    token: &str,
    uses_allowed: Change<i32>,
    expiry_time: Change<i64>,
) -> Result<Option<RegistrationToken>, AuthError> {
    let (set_uses, uses) = (uses_allowed.is_some(), uses_allowed.flatten());
    let (set_exp, exp) = (expiry_time.is_some(), expiry_time.flatten());
    let row = pool
        .query_opt(
            &format!(
                "UPDATE registration_tokens SET \
                 uses_allowed = CASE WHEN $2 THEN $3 ELSE uses_allowed END, \
                 expiry_time = CASE WHEN $4 THEN $5 ELSE expiry_time END \
                 WHERE token = $1 RETURNING {COLS}"
            ),
            &[&token, &set_uses, &uses, &set_exp, &exp],
        )
        .await?;
    row.as_ref().map(token_of).transpose()
}

/// Returns whether it existed.
pub async fn delete(pool: &Pool, token: &str) -> Result<bool, AuthError> {
    let n = pool
        .execute(
            "DELETE FROM registration_tokens WHERE token = $1",
            &[&token],
        )
        .await?;
    Ok(n > 0)
}

/// Whether any token could be used now: registration then asks for one.
pub async fn any_valid(pool: &Pool, now_ms: i64) -> Result<bool, AuthError> {
    Ok(pool
        .query_opt(
            "SELECT 1::int8 FROM registration_tokens \
             WHERE (uses_allowed IS NULL OR completed + pending < uses_allowed) \
             AND (expiry_time IS NULL OR expiry_time > $1) LIMIT 1",
            &[&now_ms],
        )
        .await?
        .is_some())
}

/// Whether `token` is usable now, without spending it (the validity
/// endpoint).
pub async fn is_valid(pool: &Pool, token: &str, now_ms: i64) -> Result<bool, AuthError> {
    Ok(get(pool, token).await?.is_some_and(|t| t.is_valid(now_ms)))
}

/// Spend one use of `token` if it is usable; the check and the count are
/// one statement, so two registrations cannot share the last use.
pub async fn consume(pool: &Pool, token: &str, now_ms: i64) -> Result<bool, AuthError> {
    let n = pool
        .execute(
            "UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1 \
             AND (uses_allowed IS NULL OR completed + pending < uses_allowed) \
             AND (expiry_time IS NULL OR expiry_time > $2)",
            &[&token, &now_ms],
        )
        .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_and_validity() {
        assert!(valid_token_syntax("abc-._~Z9"));
        assert!(!valid_token_syntax(""));
        assert!(!valid_token_syntax("a b"));
        assert!(!valid_token_syntax(&"a".repeat(65)));
        let t = RegistrationToken {
            token: "t".into(),
            uses_allowed: Some(1),
            pending: 0,
            completed: 0,
            expiry_time: Some(100),
        };
        assert!(t.is_valid(99));
        assert!(!t.is_valid(100));
        let spent = RegistrationToken {
            completed: 1,
            ..t.clone()
        };
        assert!(!spent.is_valid(0));
    }
}

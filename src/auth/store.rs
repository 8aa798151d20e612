//! SQL of accounts, devices, tokens and profiles (schema:
//! `migrations/0002_accounts.sql`). Multi-statement changes use
//! `pipeline_transaction`: atomic, one round trip.

use ruma::{OwnedUserId, UserId};

use super::{tokens, AuthError, Requester};
use crate::db::error::UNIQUE_VIOLATION;
use crate::db::{DbError, Pool, Row, ToSql};
use crate::primitives::unix_ms_i64 as now_ms;

/// What login needs to know about a user.
#[derive(Debug, Clone)]
pub struct LoginInfo {
    pub password_hash: Option<String>,
    pub deactivated: bool,
}

/// A device as `GET /devices` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Device {
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ts: Option<i64>,
}

/// A profile (`displayname`, `avatar_url`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// A new user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub user_id: OwnedUserId,
    pub password_hash: Option<String>,
    pub admin: bool,
    pub displayname: Option<String>,
}

/// A new session (device + token) to create.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// Reused if the user already has it, else created.
    pub device_id: Option<String>,
    pub display_name: Option<String>,
    pub ip: Option<String>,
}

/// A created session.
#[derive(Debug, Clone)]
pub struct Session {
    pub device_id: String,
    pub access_token: String,
}

fn in_use(e: DbError) -> AuthError {
    if e.code() == Some(UNIQUE_VIOLATION) {
        AuthError::UserInUse
    } else {
        e.into()
    }
}

fn parse_user(s: String) -> Result<OwnedUserId, AuthError> {
    UserId::parse(s).map_err(|e| AuthError::Internal(format!("bad user id in database: {e}")))
}

fn tokens_of(rows: &[Row]) -> Result<Vec<String>, AuthError> {
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(AuthError::from))
        .collect()
}

/// The requester of a valid token of an active user, found by the token's
/// hash ([`tokens::hash_token`]: the table holds no usable token).
pub async fn lookup_token(pool: &Pool, token_hash: &str) -> Result<Requester, AuthError> {
    let row = pool
        .query_opt(
            "SELECT t.user_id, t.device_id, u.is_guest FROM access_tokens t \
             JOIN users u ON u.user_id = t.user_id \
             WHERE t.token_hash = $1 AND NOT u.deactivated",
            &[&token_hash],
        )
        .await?;
    let row = row.ok_or(AuthError::UnknownToken)?;
    Ok(Requester {
        user_id: parse_user(row.get(0)?)?,
        device_id: row.get(1)?,
        is_guest: row.get(2)?,
    })
}

/// Whether the id is taken (deactivated users keep theirs).
pub async fn user_exists(pool: &Pool, user_id: &UserId) -> Result<bool, AuthError> {
    Ok(pool
        .query_opt(
            "SELECT 1::int8 FROM users WHERE user_id = $1",
            &[&user_id.as_str()],
        )
        .await?
        .is_some())
}

pub async fn login_info(pool: &Pool, user_id: &UserId) -> Result<Option<LoginInfo>, AuthError> {
    let row = pool
        .query_opt(
            "SELECT password_hash, deactivated FROM users WHERE user_id = $1",
            &[&user_id.as_str()],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(LoginInfo {
            password_hash: r.get(0)?,
            deactivated: r.get(1)?,
        })),
    }
}

const INSERT_USER: &str =
    "INSERT INTO users (user_id, password_hash, admin, created_ts, displayname) \
     VALUES ($1, $2, $3, $4, $5)";
const INSERT_DEVICE: &str = "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip) \
     VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (user_id, device_id) DO NOTHING";
const INSERT_TOKEN: &str =
    "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)";

/// Create a user, and with `session` its first device and token, atomically.
/// A taken id is [`AuthError::UserInUse`] (the primary key decides races).
pub async fn create_user(
    pool: &Pool,
    user: &NewUser,
    session: Option<&NewSession>,
) -> Result<Option<Session>, AuthError> {
    let ts = now_ms();
    let uid = user.user_id.as_str();
    let user_params: [&dyn ToSql; 5] = [
        &uid,
        &user.password_hash,
        &user.admin,
        &ts,
        &user.displayname,
    ];
    let Some(s) = session else {
        pool.execute(INSERT_USER, &user_params)
            .await
            .map_err(in_use)?;
        return Ok(None);
    };
    let device_id = match &s.device_id {
        Some(d) => d.clone(),
        None => tokens::new_device_id()?,
    };
    let token = tokens::new_access_token()?;
    let dev_params: [&dyn ToSql; 5] = [&uid, &device_id, &s.display_name, &ts, &s.ip];
    let token_hash = tokens::hash_token(&token);
    let tok_params: [&dyn ToSql; 4] = [&token_hash, &uid, &device_id, &ts];
    pool.pipeline_transaction(&[
        (INSERT_USER, &user_params),
        (INSERT_DEVICE, &dev_params),
        (INSERT_TOKEN, &tok_params),
    ])
    .await
    .map_err(in_use)?;
    Ok(Some(Session {
        device_id,
        access_token: token,
    }))
}

/// A new token on a (new or reused) device of an existing user.
pub async fn create_session(
    pool: &Pool,
    user_id: &UserId,
    s: &NewSession,
) -> Result<Session, AuthError> {
    let ts = now_ms();
    let uid = user_id.as_str();
    let device_id = match &s.device_id {
        Some(d) => d.clone(),
        None => tokens::new_device_id()?,
    };
    let token = tokens::new_access_token()?;
    let dev_params: [&dyn ToSql; 5] = [&uid, &device_id, &s.display_name, &ts, &s.ip];
    let token_hash = tokens::hash_token(&token);
    let tok_params: [&dyn ToSql; 4] = [&token_hash, &uid, &device_id, &ts];
    pool.pipeline_transaction(&[
        (INSERT_DEVICE, &dev_params),
        (
            "UPDATE devices SET last_seen_ts = $3, last_seen_ip = coalesce($4, last_seen_ip) \
             WHERE user_id = $1 AND device_id = $2",
            &[&uid, &device_id, &ts, &s.ip],
        ),
        (INSERT_TOKEN, &tok_params),
    ])
    .await?;
    Ok(Session {
        device_id,
        access_token: token,
    })
}

/// Delete devices (and, by cascade, their tokens); returns the tokens that
/// died, for cache invalidation. Unknown ids are ignored.
pub async fn delete_devices(
    pool: &Pool,
    user_id: &UserId,
    device_ids: &[String],
) -> Result<Vec<String>, AuthError> {
    let uid = user_id.as_str();
    let res = pool
        .pipeline_transaction(&[
            (
                "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = ANY($2) RETURNING token_hash",
                &[&uid, &device_ids],
            ),
            (
                "DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2)",
                &[&uid, &device_ids],
            ),
        ])
        .await?;
    tokens_of(res.first().map_or(&[][..], |r| &r.rows))
}

/// Delete every device of a user except `keep`; returns the dead tokens.
pub async fn delete_other_devices(
    pool: &Pool,
    user_id: &UserId,
    keep: Option<&str>,
) -> Result<Vec<String>, AuthError> {
    let uid = user_id.as_str();
    let keep = keep.map(str::to_owned);
    let res = pool
        .pipeline_transaction(&[
            (
                "DELETE FROM access_tokens WHERE user_id = $1 \
                 AND ($2::text IS NULL OR device_id <> $2) RETURNING token_hash",
                &[&uid, &keep],
            ),
            (
                "DELETE FROM devices WHERE user_id = $1 AND ($2::text IS NULL OR device_id <> $2)",
                &[&uid, &keep],
            ),
        ])
        .await?;
    tokens_of(res.first().map_or(&[][..], |r| &r.rows))
}

pub async fn set_password_hash(pool: &Pool, user_id: &UserId, hash: &str) -> Result<(), AuthError> {
    pool.execute(
        "UPDATE users SET password_hash = $2 WHERE user_id = $1",
        &[&user_id.as_str(), &hash],
    )
    .await?;
    Ok(())
}

/// Deactivate: no password, no profile, no devices, no tokens; the row
/// stays so the id is never handed out again. Returns the dead tokens.
pub async fn deactivate(pool: &Pool, user_id: &UserId) -> Result<Vec<String>, AuthError> {
    let uid = user_id.as_str();
    let res = pool
        .pipeline_transaction(&[
            (
                "UPDATE users SET deactivated = true, password_hash = NULL, \
                 displayname = NULL, avatar_url = NULL WHERE user_id = $1",
                &[&uid],
            ),
            (
                "DELETE FROM access_tokens WHERE user_id = $1 RETURNING token_hash",
                &[&uid],
            ),
            ("DELETE FROM devices WHERE user_id = $1", &[&uid]),
        ])
        .await?;
    tokens_of(res.get(1).map_or(&[][..], |r| &r.rows))
}

fn device_of(r: &Row) -> Result<Device, AuthError> {
    Ok(Device {
        device_id: r.get(0)?,
        display_name: r.get(1)?,
        last_seen_ip: r.get(2)?,
        last_seen_ts: r.get(3)?,
    })
}

const DEVICE_COLS: &str = "device_id, display_name, last_seen_ip, last_seen_ts";

pub async fn list_devices(pool: &Pool, user_id: &UserId) -> Result<Vec<Device>, AuthError> {
    let rows = pool
        .query(
            &format!("SELECT {DEVICE_COLS} FROM devices WHERE user_id = $1 ORDER BY device_id"),
            &[&user_id.as_str()],
        )
        .await?;
    rows.iter().map(device_of).collect()
}

pub async fn get_device(
    pool: &Pool,
    user_id: &UserId,
    device_id: &str,
) -> Result<Option<Device>, AuthError> {
    let row = pool
        .query_opt(
            &format!("SELECT {DEVICE_COLS} FROM devices WHERE user_id = $1 AND device_id = $2"),
            &[&user_id.as_str(), &device_id],
        )
        .await?;
    row.as_ref().map(device_of).transpose()
}

/// Returns whether the device exists.
pub async fn set_device_name(
    pool: &Pool,
    user_id: &UserId,
    device_id: &str,
    name: Option<&str>,
) -> Result<bool, AuthError> {
    let name = name.map(str::to_owned);
    let n = pool
        .execute(
            "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
            &[&user_id.as_str(), &device_id, &name],
        )
        .await?;
    Ok(n > 0)
}

/// The profile of a known user (`None`: no such user).
pub async fn get_profile(pool: &Pool, user_id: &UserId) -> Result<Option<Profile>, AuthError> {
    let row = pool
        .query_opt(
            "SELECT displayname, avatar_url FROM users WHERE user_id = $1",
            &[&user_id.as_str()],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(Profile {
            displayname: r.get(0)?,
            avatar_url: r.get(1)?,
        })),
    }
}

/// Which profile field to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileField {
    Displayname,
    AvatarUrl,
}

pub async fn set_profile_field(
    pool: &Pool,
    user_id: &UserId,
    field: ProfileField,
    value: Option<&str>,
) -> Result<(), AuthError> {
    let sql = match field {
        ProfileField::Displayname => "UPDATE users SET displayname = $2 WHERE user_id = $1",
        ProfileField::AvatarUrl => "UPDATE users SET avatar_url = $2 WHERE user_id = $1",
    };
    let value = value.map(str::to_owned);
    pool.execute(sql, &[&user_id.as_str(), &value]).await?;
    Ok(())
}

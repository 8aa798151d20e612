//! What the admin API reads and changes of accounts (Synapse's
//! `/_synapse/admin/v2/users`): listing with filters and paging, one
//! account's details, the admin flag, and the devices `whois` shows.
//! The SQL of the `users` table stays in the auth module.

use ruma::UserId;

use super::AuthError;
use crate::db::{Pool, Row, ToSql};

/// One account as the admin API describes it.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub name: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub is_guest: bool,
    pub admin: bool,
    pub deactivated: bool,
    pub creation_ts: i64,
    /// Latest `last_seen_ts` of its devices.
    pub last_seen_ts: Option<i64>,
}

const USER_COLS: &str = "u.user_id, u.displayname, u.avatar_url, u.is_guest, u.admin, \
     u.deactivated, u.created_ts, \
     (SELECT max(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id)";

fn user_of(r: &Row) -> Result<UserInfo, AuthError> {
    Ok(UserInfo {
        name: r.get(0)?,
        displayname: r.get(1)?,
        avatar_url: r.get(2)?,
        is_guest: r.get(3)?,
        admin: r.get(4)?,
        deactivated: r.get(5)?,
        creation_ts: r.get(6)?,
        last_seen_ts: r.get(7)?,
    })
}

/// Whether `user_id` is a server admin (the gate of every admin call).
pub async fn is_admin(pool: &Pool, user_id: &UserId) -> Result<bool, AuthError> {
    let row = pool
        .query_opt(
            "SELECT admin FROM users WHERE user_id = $1",
            &[&user_id.as_str()],
        )
        .await?;
    Ok(match row {
        Some(r) => r.get(0)?,
        None => false,
    })
}

pub async fn get_user(pool: &Pool, user_id: &UserId) -> Result<Option<UserInfo>, AuthError> {
    let row = pool
        .query_opt(
            &format!("SELECT {USER_COLS} FROM users u WHERE u.user_id = $1"),
            &[&user_id.as_str()],
        )
        .await?;
    row.as_ref().map(user_of).transpose()
}

/// Sort keys `GET /v2/users?order_by=` accepts (Synapse's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOrder {
    Name,
    IsGuest,
    Admin,
    Deactivated,
    Displayname,
    AvatarUrl,
    CreationTs,
    LastSeenTs,
}

impl UserOrder {
    pub fn parse(s: &str) -> Option<UserOrder> {
        Some(match s {
            "name" => UserOrder::Name,
            "is_guest" => UserOrder::IsGuest,
            "admin" => UserOrder::Admin,
            "deactivated" => UserOrder::Deactivated,
            "displayname" => UserOrder::Displayname,
            "avatar_url" => UserOrder::AvatarUrl,
            "creation_ts" => UserOrder::CreationTs,
            "last_seen_ts" => UserOrder::LastSeenTs,
            // Synapse accepts these too; hearth has no such data, so they
            // sort as by name.
            "user_type" | "shadow_banned" | "locked" | "approved" => UserOrder::Name,
            _ => return None,
        })
    }

    /// A fixed SQL expression per key: never text from the request.
    fn column(self) -> &'static str {
        match self {
            UserOrder::Name => "u.user_id",
            UserOrder::IsGuest => "u.is_guest",
            UserOrder::Admin => "u.admin",
            UserOrder::Deactivated => "u.deactivated",
            UserOrder::Displayname => "u.displayname",
            UserOrder::AvatarUrl => "u.avatar_url",
            UserOrder::CreationTs => "u.created_ts",
            UserOrder::LastSeenTs => "8",
        }
    }
}

/// `GET /v2/users`' filters.
#[derive(Debug, Clone)]
pub struct UserQuery {
    pub from: i64,
    pub limit: i64,
    /// Localpart or display name contains (case-insensitive).
    pub name: Option<String>,
    /// User id contains (ignored when `name` is given, as in Synapse).
    pub user_id: Option<String>,
    pub guests: bool,
    /// `None`: both; `Some(false)`: active only (the default).
    pub deactivated: Option<bool>,
    pub admins: Option<bool>,
    pub order_by: UserOrder,
    pub descending: bool,
}

/// One page of accounts and the total matching the filters.
pub async fn list_users(pool: &Pool, q: &UserQuery) -> Result<(Vec<UserInfo>, i64), AuthError> {
    let pattern = |s: &str| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    };
    let name = q.name.as_deref().map(pattern);
    let uid = match q.name {
        Some(_) => None,
        None => q.user_id.as_deref().map(pattern),
    };
    let filter = "($1::text IS NULL OR u.user_id ILIKE $1 OR u.displayname ILIKE $1) \
         AND ($2::text IS NULL OR u.user_id ILIKE $2) \
         AND ($3 OR NOT u.is_guest) \
         AND ($4::bool IS NULL OR u.deactivated = $4) \
         AND ($5::bool IS NULL OR u.admin = $5)";
    let params: [&dyn ToSql; 5] = [&name, &uid, &q.guests, &q.deactivated, &q.admins];
    let total: i64 = pool
        .query_one(
            &format!("SELECT count(*) FROM users u WHERE {filter}"),
            &params,
        )
        .await?
        .get(0)?;
    let dir = if q.descending { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {USER_COLS} FROM users u WHERE {filter} \
         ORDER BY {} {dir} NULLS LAST, u.user_id {dir} LIMIT $6 OFFSET $7",
        q.order_by.column()
    );
    let rows = pool
        .query(
            &sql,
            &[
                &name,
                &uid,
                &q.guests,
                &q.deactivated,
                &q.admins,
                &q.limit,
                &q.from,
            ],
        )
        .await?;
    let users = rows.iter().map(user_of).collect::<Result<_, _>>()?;
    Ok((users, total))
}

pub async fn set_admin(pool: &Pool, user_id: &UserId, admin: bool) -> Result<(), AuthError> {
    pool.execute(
        "UPDATE users SET admin = $2 WHERE user_id = $1",
        &[&user_id.as_str(), &admin],
    )
    .await?;
    Ok(())
}

/// Reactivation (`deactivated: false` with a password, as Synapse asks).
pub async fn reactivate(pool: &Pool, user_id: &UserId) -> Result<(), AuthError> {
    pool.execute(
        "UPDATE users SET deactivated = false WHERE user_id = $1",
        &[&user_id.as_str()],
    )
    .await?;
    Ok(())
}

/// A device as `whois` reports it: its last connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub device_id: String,
    pub ip: Option<String>,
    pub last_seen: Option<i64>,
}

pub async fn connections(pool: &Pool, user_id: &UserId) -> Result<Vec<Connection>, AuthError> {
    let rows = pool
        .query(
            "SELECT device_id, last_seen_ip, last_seen_ts FROM devices WHERE user_id = $1 \
             ORDER BY device_id",
            &[&user_id.as_str()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Connection {
                device_id: r.get(0)?,
                ip: r.get(1)?,
                last_seen: r.get(2)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_are_synapses_and_fixed_sql() {
        assert_eq!(UserOrder::parse("name"), Some(UserOrder::Name));
        assert_eq!(UserOrder::parse("creation_ts"), Some(UserOrder::CreationTs));
        assert_eq!(UserOrder::parse("name; DROP TABLE users"), None);
        assert_eq!(
            UserOrder::parse("last_seen_ts").map(|o| o.column()),
            Some("8")
        );
    }
}

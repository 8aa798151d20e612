//! The client-server API calls the scenarios make, over [`Conn`]. Nothing
//! here trusts the server: every field is checked and a missing or odd one is
//! an [`ApiError`], whose `key()` groups it in the results.

use serde_json::{json, Value};

use crate::client::{enc, Conn, TransportError};

const V3: &str = "/_matrix/client/v3";

#[derive(Debug, Clone)]
pub enum ApiError {
    /// Non-2xx: status and errcode.
    Status(u16, String),
    Transport(TransportError),
    /// 2xx but not the JSON we needed.
    Body(String),
}

impl ApiError {
    /// Group key for error counts: `"404 M_UNRECOGNIZED"`, `"timeout"`, …
    pub fn key(&self) -> String {
        match self {
            ApiError::Status(s, code) if code.is_empty() => format!("{s}"),
            ApiError::Status(s, code) => format!("{s} {code}"),
            ApiError::Transport(t) => t.0.clone(),
            ApiError::Body(b) => format!("bad body: {b}"),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

impl std::error::Error for ApiError {}

#[derive(Clone, Debug)]
pub struct Account {
    pub user_id: String,
    pub token: String,
}

/// A request that must answer 2xx; returns the body.
pub async fn call(
    conn: &mut Conn,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Vec<u8>, ApiError> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let r = conn
        .request(method, path, token, bytes.as_deref())
        .await
        .map_err(ApiError::Transport)?;
    if (200..300).contains(&r.status) {
        Ok(r.body)
    } else {
        Err(ApiError::Status(r.status, errcode(&r.body)))
    }
}

fn errcode(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errcode")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Body(format!("json: {e}")))
}

fn field(v: &Value, name: &str) -> Result<String, ApiError> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Body(format!("no {name}")))
}

/// `GET /versions`; returns the `Server` header if any.
pub async fn server_header(conn: &mut Conn) -> Result<Option<String>, ApiError> {
    let r = conn
        .request("GET", "/_matrix/client/versions", None, None)
        .await
        .map_err(ApiError::Transport)?;
    if r.status != 200 {
        return Err(ApiError::Status(r.status, errcode(&r.body)));
    }
    Ok(r.server)
}

/// Registration through user-interactive auth with `m.login.dummy`
/// (client-server API, "Account registration"): the first POST answers 401
/// with a session, the second completes the stage.
pub async fn register(
    conn: &mut Conn,
    username: &str,
    password: &str,
) -> Result<Account, ApiError> {
    let path = format!("{V3}/register");
    let mut body = json!({"username": username, "password": password});
    let bytes = body.to_string().into_bytes();
    let r = conn
        .request("POST", &path, None, Some(&bytes))
        .await
        .map_err(ApiError::Transport)?;
    let done = if r.status == 401 {
        let session = field(&parse(&r.body)?, "session")?;
        body["auth"] = json!({"type": "m.login.dummy", "session": session});
        call(conn, "POST", &path, None, Some(&body)).await?
    } else if r.status == 200 {
        r.body
    } else {
        return Err(ApiError::Status(r.status, errcode(&r.body)));
    };
    let v = parse(&done)?;
    Ok(Account {
        user_id: field(&v, "user_id")?,
        token: field(&v, "access_token")?,
    })
}

/// A public room named `name` (one `m.room.name` event in its initial state).
pub async fn create_room(conn: &mut Conn, token: &str, name: &str) -> Result<String, ApiError> {
    let body = json!({"preset": "public_chat", "name": name});
    let r = call(
        conn,
        "POST",
        &format!("{V3}/createRoom"),
        Some(token),
        Some(&body),
    )
    .await?;
    field(&parse(&r)?, "room_id")
}

pub async fn join(conn: &mut Conn, token: &str, room: &str) -> Result<(), ApiError> {
    let path = format!("{V3}/join/{}", enc(room));
    call(conn, "POST", &path, Some(token), Some(&json!({}))).await?;
    Ok(())
}

/// `PUT /rooms/{room}/send/m.room.message/{txn}`; returns the event id.
pub async fn send(
    conn: &mut Conn,
    token: &str,
    room: &str,
    txn: &str,
    text: &str,
) -> Result<String, ApiError> {
    let path = format!("{V3}/rooms/{}/send/m.room.message/{}", enc(room), enc(txn));
    let body = json!({"msgtype": "m.text", "body": text});
    let r = call(conn, "PUT", &path, Some(token), Some(&body)).await?;
    field(&parse(&r)?, "event_id")
}

/// `GET /sync`; returns the raw body and its `next_batch`.
pub async fn sync(
    conn: &mut Conn,
    token: &str,
    since: Option<&str>,
    timeout_ms: u64,
    filter: Option<&str>,
) -> Result<(Vec<u8>, String), ApiError> {
    let mut path = format!("{V3}/sync?timeout={timeout_ms}");
    if let Some(s) = since {
        path += &format!("&since={}", enc(s));
    }
    if let Some(f) = filter {
        path += &format!("&filter={}", enc(f));
    }
    let body = call(conn, "GET", &path, Some(token), None).await?;
    // Only `next_batch` is read: a typed parse skips the rest without
    // building a tree (the instrument's cost, see `client::Conn`).
    #[derive(serde::Deserialize)]
    struct Next<'a> {
        #[serde(borrow)]
        next_batch: Option<std::borrow::Cow<'a, str>>,
    }
    let next = serde_json::from_slice::<Next>(&body)
        .map_err(|e| ApiError::Body(format!("json: {e}")))?
        .next_batch
        .ok_or_else(|| ApiError::Body("no next_batch".into()))?
        .into_owned();
    Ok((body, next))
}

pub async fn receipt(
    conn: &mut Conn,
    token: &str,
    room: &str,
    event: &str,
) -> Result<(), ApiError> {
    let path = format!("{V3}/rooms/{}/receipt/m.read/{}", enc(room), enc(event));
    call(conn, "POST", &path, Some(token), Some(&json!({}))).await?;
    Ok(())
}

pub async fn typing(
    conn: &mut Conn,
    token: &str,
    room: &str,
    user: &str,
    on: bool,
) -> Result<(), ApiError> {
    let path = format!("{V3}/rooms/{}/typing/{}", enc(room), enc(user));
    let body = if on {
        json!({"typing": true, "timeout": 10000})
    } else {
        json!({"typing": false})
    };
    call(conn, "PUT", &path, Some(token), Some(&body)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_keys_group_by_status_and_code() {
        assert_eq!(
            ApiError::Status(404, "M_UNRECOGNIZED".into()).key(),
            "404 M_UNRECOGNIZED"
        );
        assert_eq!(ApiError::Status(502, String::new()).key(), "502");
        assert_eq!(
            ApiError::Transport(TransportError("timeout".into())).key(),
            "timeout"
        );
        assert_eq!(errcode(br#"{"errcode":"M_FORBIDDEN"}"#), "M_FORBIDDEN");
        assert_eq!(errcode(b"<html>"), "");
    }
}

//! Pushers (client-server API "Push Notifications" → "Pushers":
//! `GET /pushers`, `POST /pushers/set`): checking a request ([`parse`], pure)
//! and storing it in `pushers` on the user's shard ([`set`]). Sending to a
//! pusher's gateway is later work (issue 11, item 3).

use ruma::{OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::db::{Pool, SqlValue, Write};
use crate::ephemeral::{on_shard, EphError};
use crate::mesh::{shard_for_user, MeshEndpoint};

/// Spec: "Max length, 512 bytes."
pub const MAX_PUSHKEY_BYTES: usize = 512;
/// Spec: "Max length, 64 chars."
pub const MAX_APP_ID_CHARS: usize = 64;
/// The path an HTTP pusher's URL must have (spec: `data.url`).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// Why a `/pushers/set` body is refused (400 each; the edge picks the errcode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PusherError {
    #[error("{0}")]
    MissingParam(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    BadJson(String),
}

/// A pusher as `GET /pushers` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pusher {
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: Value,
}

impl Pusher {
    /// The spec's JSON object.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "app_id": self.app_id,
            "pushkey": self.pushkey,
            "kind": self.kind,
            "app_display_name": self.app_display_name,
            "device_display_name": self.device_display_name,
            "lang": self.lang,
            "data": self.data,
        });
        if let (Some(tag), Some(o)) = (&self.profile_tag, v.as_object_mut()) {
            o.insert("profile_tag".into(), json!(tag));
        }
        v
    }
}

/// What a `/pushers/set` body asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or update; unless `append`, the same app id and pushkey of
    /// other users go.
    Set { pusher: Pusher, append: bool },
    /// `kind: null`: remove this user's pusher with this app id and pushkey.
    Delete { app_id: String, pushkey: String },
}

fn string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, PusherError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(PusherError::BadJson(format!("'{key}' must be a string"))),
    }
}

/// Checks a `/pushers/set` body.
pub fn parse(body: &Map<String, Value>) -> Result<Change, PusherError> {
    let mut missing = Vec::new();
    let app_id = string(body, "app_id")?;
    let pushkey = string(body, "pushkey")?;
    if !body.contains_key("kind") {
        missing.push("kind");
    }
    if app_id.is_none() {
        missing.push("app_id");
    }
    if pushkey.is_none() {
        missing.push("pushkey");
    }
    let kind = string(body, "kind")?;
    let (Some(app_id), Some(pushkey)) = (app_id, pushkey) else {
        return Err(missing_params(&missing));
    };
    if !missing.is_empty() {
        return Err(missing_params(&missing));
    }
    if pushkey.is_empty() || pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(PusherError::InvalidParam(format!(
            "pushkey must be 1 to {MAX_PUSHKEY_BYTES} bytes"
        )));
    }
    if app_id.is_empty() || app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(PusherError::InvalidParam(format!(
            "app_id must be 1 to {MAX_APP_ID_CHARS} characters"
        )));
    }
    let Some(kind) = kind else {
        return Ok(Change::Delete { app_id, pushkey });
    };
    let app_display_name = string(body, "app_display_name")?;
    let device_display_name = string(body, "device_display_name")?;
    let lang = string(body, "lang")?;
    let data = match body.get("data") {
        None | Some(Value::Null) => None,
        Some(d @ Value::Object(_)) => Some(d.clone()),
        Some(_) => return Err(PusherError::BadJson("'data' must be an object".into())),
    };
    for (name, present) in [
        ("app_display_name", app_display_name.is_some()),
        ("device_display_name", device_display_name.is_some()),
        ("lang", lang.is_some()),
        ("data", data.is_some()),
    ] {
        if !present {
            missing.push(name);
        }
    }
    let (Some(app_display_name), Some(device_display_name), Some(lang), Some(data)) =
        (app_display_name, device_display_name, lang, data)
    else {
        return Err(missing_params(&missing));
    };
    // Only HTTP pushers: hearth sends no email.
    if kind != "http" {
        return Err(PusherError::InvalidParam(format!(
            "Unsupported pusher kind {kind:?}"
        )));
    }
    check_http_data(&data)?;
    let append = match body.get("append") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(PusherError::BadJson("'append' must be a boolean".into())),
    };
    Ok(Change::Set {
        pusher: Pusher {
            app_id,
            pushkey,
            kind,
            app_display_name,
            device_display_name,
            profile_tag: string(body, "profile_tag")?,
            lang,
            data,
        },
        append,
    })
}

fn missing_params(names: &[&str]) -> PusherError {
    PusherError::MissingParam(format!("Missing parameters: {}", names.join(", ")))
}

/// An HTTP pusher's `data`: a `url` of `http(s)://host…/_matrix/push/v1/notify`
/// (the spec says HTTPS; plain HTTP is kept for gateways on a private
/// network, as Synapse does), and `format` only `event_id_only`.
fn check_http_data(data: &Value) -> Result<(), PusherError> {
    let Some(url) = data.get("url") else {
        return Err(PusherError::MissingParam(
            "'url' is required in 'data' for an HTTP pusher".into(),
        ));
    };
    let Some(url) = url.as_str() else {
        return Err(PusherError::BadJson("'data.url' must be a string".into()));
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let path_ok = rest
        .and_then(|r| r.find('/').map(|i| (i, r)))
        .is_some_and(|(i, r)| i > 0 && r[i..].split(['?', '#']).next() == Some(NOTIFY_PATH));
    if !path_ok {
        return Err(PusherError::InvalidParam(format!(
            "'data.url' must be an HTTP(S) URL with the path {NOTIFY_PATH}"
        )));
    }
    match data.get("format") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(f)) if f == "event_id_only" => Ok(()),
        Some(_) => Err(PusherError::InvalidParam(
            "'data.format' can only be \"event_id_only\"".into(),
        )),
    }
}

/// Applies `change` for `user` (who set it from `device_id`) on the user's
/// shard; returns after COMMIT.
pub async fn set(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    device_id: String,
    change: Change,
) -> Result<(), EphError> {
    let target = shard_for_user(&user, mesh.n_shards());
    on_shard(mesh, target, move |state| async move {
        let write = match change {
            Change::Delete { app_id, pushkey } => Write::new().statement(
                "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
                vec![user.as_str().into(), app_id.into(), pushkey.into()],
            ),
            Change::Set { pusher, append } => {
                // Before the row exists, so no dispatch skips it
                // (`gateway::HttpPushers`).
                state.http_pushers.added();
                let mut w = Write::new();
                if !append {
                    w = w.statement(
                        "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
                        vec![
                            pusher.app_id.clone().into(),
                            pusher.pushkey.clone().into(),
                            user.as_str().into(),
                        ],
                    );
                }
                w.statement(
                    "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, \
                     device_display_name, profile_tag, lang, data, device_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET \
                     kind = excluded.kind, app_display_name = excluded.app_display_name, \
                     device_display_name = excluded.device_display_name, \
                     profile_tag = excluded.profile_tag, lang = excluded.lang, \
                     data = excluded.data, device_id = excluded.device_id",
                    vec![
                        user.as_str().into(),
                        pusher.app_id.into(),
                        pusher.pushkey.into(),
                        pusher.kind.into(),
                        pusher.app_display_name.into(),
                        pusher.device_display_name.into(),
                        SqlValue::from(pusher.profile_tag),
                        pusher.lang.into(),
                        SqlValue::Jsonb(pusher.data),
                        device_id.into(),
                    ],
                )
            }
        };
        state.writer.submit(write).await?;
        Ok(())
    })
    .await
}

/// The user's pushers, oldest first.
pub async fn list(db: &Pool, user: &UserId) -> Result<Vec<Pusher>, EphError> {
    let rows = db
        .query(
            "SELECT app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, \
             lang, data FROM pushers WHERE user_id = $1 ORDER BY created_at, app_id, pushkey",
            &[&user.as_str()],
        )
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Pusher {
                app_id: r.get(0)?,
                pushkey: r.get(1)?,
                kind: r.get(2)?,
                app_display_name: r.get(3)?,
                device_display_name: r.get(4)?,
                profile_tag: r.get(5)?,
                lang: r.get(6)?,
                data: r.get(7)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn full() -> Value {
        json!({
            "kind": "http", "app_id": "com.example.app", "pushkey": "k1",
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": {"url": "https://push.example/_matrix/push/v1/notify", "format": "event_id_only"},
        })
    }

    #[test]
    fn a_full_http_pusher_is_accepted() {
        let Ok(Change::Set { pusher, append }) = parse(&body(full())) else {
            panic!("refused")
        };
        assert!(!append);
        assert_eq!(pusher.to_json()["data"]["format"], "event_id_only");
        assert!(pusher.to_json().get("profile_tag").is_none());
    }

    #[test]
    fn null_kind_deletes() {
        let c = parse(&body(json!({"kind": null, "app_id": "a", "pushkey": "k"})));
        assert_eq!(
            c,
            Ok(Change::Delete {
                app_id: "a".into(),
                pushkey: "k".into()
            })
        );
    }

    #[test]
    fn refusals() {
        let with = |k: &str, v: Value| {
            let mut b = full();
            b[k] = v;
            parse(&body(b))
        };
        let without = |k: &str| {
            let mut b = full();
            b.as_object_mut().unwrap().remove(k);
            parse(&body(b))
        };
        for k in [
            "kind",
            "app_id",
            "pushkey",
            "lang",
            "data",
            "app_display_name",
        ] {
            assert!(
                matches!(without(k), Err(PusherError::MissingParam(_))),
                "{k}"
            );
        }
        assert!(matches!(
            with("kind", json!("email")),
            Err(PusherError::InvalidParam(_))
        ));
        assert!(matches!(
            with("pushkey", json!("x".repeat(513))),
            Err(PusherError::InvalidParam(_))
        ));
        assert!(matches!(
            with("app_id", json!("x".repeat(65))),
            Err(PusherError::InvalidParam(_))
        ));
        assert!(matches!(
            with("data", json!({})),
            Err(PusherError::MissingParam(_))
        ));
        assert!(matches!(
            with("data", json!([])),
            Err(PusherError::BadJson(_))
        ));
        for url in [
            "https://push.example/other",
            "ftp://push.example/_matrix/push/v1/notify",
            "https:///_matrix/push/v1/notify",
            "push.example/_matrix/push/v1/notify",
        ] {
            assert!(
                matches!(
                    with("data", json!({"url": url})),
                    Err(PusherError::InvalidParam(_))
                ),
                "{url}"
            );
        }
        assert!(with(
            "data",
            json!({"url": "http://127.0.0.1:9/_matrix/push/v1/notify"})
        )
        .is_ok());
        assert!(matches!(
            with(
                "data",
                json!({"url": "https://p/_matrix/push/v1/notify", "format": "full"})
            ),
            Err(PusherError::InvalidParam(_))
        ));
        assert!(matches!(
            with("append", json!("yes")),
            Err(PusherError::BadJson(_))
        ));
        assert!(matches!(
            with("lang", json!(1)),
            Err(PusherError::BadJson(_))
        ));
    }
}

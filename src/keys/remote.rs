//! Keys of remote users, asked of their servers (client-server API
//! "POST /keys/query" and "POST /keys/claim": the homeserver queries
//! remote servers itself and reports those that failed in `failures`).
//!
//! One signed request per server (server-server API "End-to-End
//! Encryption": `/user/keys/query`, `/user/keys/claim`), all at once, each
//! bounded by the client's `timeout`. A server is trusted only for its
//! own users, and only for those asked: anything else in its answer is
//! dropped, so a server cannot plant keys of someone else's devices.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use crate::federation::{FedError, Federation};

/// `server -> {user: what is asked of that user}` (device ids for a
/// query, `{device: algorithm}` for a claim).
pub type ByServer = BTreeMap<String, Map<String, Value>>;

/// The client's `timeout` when it gives none (spec: 10 seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may make us wait on remote servers.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The `timeout` (ms) of a request body, defaulted and capped.
pub fn timeout_of(body: &Map<String, Value>) -> Duration {
    body.get("timeout")
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT)
}

/// What the remote servers answered, merged, and those that did not.
#[derive(Debug, Default)]
pub struct Merged {
    /// `field -> {user: ...}` (`device_keys`, `master_keys`, … or
    /// `one_time_keys`).
    pub fields: BTreeMap<&'static str, Map<String, Value>>,
    /// `server -> {status, message}`, as Synapse reports them.
    pub failures: Map<String, Value>,
}

/// The fields of a `/user/keys/query` answer taken over (a remote gives
/// no `user_signing_keys` but for its own requester; kept if present).
const QUERY_FIELDS: [&str; 4] = [
    "device_keys",
    "master_keys",
    "self_signing_keys",
    "user_signing_keys",
];

/// `POST /_matrix/federation/v1/user/keys/query` of every server in `asks`.
pub async fn query(fed: &Federation, asks: &ByServer, timeout: Duration) -> Merged {
    let answers = fan_out(
        fed,
        "/_matrix/federation/v1/user/keys/query",
        "device_keys",
        asks,
        timeout,
    )
    .await;
    merge(answers, asks, &QUERY_FIELDS)
}

/// `POST /_matrix/federation/v1/user/keys/claim` of every server in `asks`.
pub async fn claim(fed: &Federation, asks: &ByServer, timeout: Duration) -> Merged {
    let answers = fan_out(
        fed,
        "/_matrix/federation/v1/user/keys/claim",
        "one_time_keys",
        asks,
        timeout,
    )
    .await;
    merge(answers, asks, &["one_time_keys"])
}

type Answer = Result<Map<String, Value>, FedError>;

async fn fan_out(
    fed: &Federation,
    path: &str,
    field: &str,
    asks: &ByServer,
    timeout: Duration,
) -> Vec<(String, Option<Answer>)> {
    let calls = asks.iter().map(|(server, users)| async move {
        let body = json!({ field: users });
        let call = fed.request_json::<Map<String, Value>>(server, "POST", path, Some(&body));
        // `None`: timed out.
        let r = monoio::time::timeout(timeout, call).await.ok();
        (server.clone(), r)
    });
    join_all(calls).await
}

fn merge(
    answers: Vec<(String, Option<Answer>)>,
    asks: &ByServer,
    fields: &[&'static str],
) -> Merged {
    let mut out = Merged::default();
    for f in fields {
        out.fields.insert(f, Map::new());
    }
    for (server, answer) in answers {
        let mut answer = match answer {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                tracing::info!(%server, error = %e, "remote key request failed");
                out.failures.insert(server, failure(&e));
                continue;
            }
            None => {
                out.failures
                    .insert(server, json!({"status": 503, "message": "timed out"}));
                continue;
            }
        };
        let Some(asked) = asks.get(&server) else {
            continue;
        };
        for f in fields {
            let Some(Value::Object(of_users)) = answer.remove(*f) else {
                continue;
            };
            let Some(into) = out.fields.get_mut(f) else {
                continue;
            };
            for (user, v) in of_users {
                if asked.contains_key(&user) && of_server(&user, &server) && v.is_object() {
                    into.insert(user, v);
                }
            }
        }
    }
    out
}

/// Whether `user` is a user id of `server`'s.
fn of_server(user: &str, server: &str) -> bool {
    ruma::UserId::parse(user).is_ok_and(|u| u.server_name().as_str() == server)
}

/// A failure as Synapse reports it (`{status, message}`): the remote's
/// status if it answered, 503 if it could not be reached.
fn failure(e: &FedError) -> Value {
    let status = match e {
        FedError::Status { status, .. } => *status,
        _ => 503,
    };
    json!({"status": status, "message": e.to_string()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_only_asked_users_of_the_server() {
        let mut asks = ByServer::new();
        let mut users = Map::new();
        users.insert("@a:b.example".into(), json!([]));
        asks.insert("b.example".into(), users);
        let answer: Map<String, Value> = serde_json::from_value(json!({
            "device_keys": {
                "@a:b.example": {"D": {}},
                "@c:b.example": {"D": {}},
                "@a:c.example": {"D": {}},
            },
            "master_keys": {"@a:c.example": {}},
        }))
        .unwrap();
        let m = merge(
            vec![("b.example".into(), Some(Ok(answer)))],
            &asks,
            &QUERY_FIELDS,
        );
        let dk = &m.fields["device_keys"];
        assert_eq!(dk.len(), 1);
        assert!(dk.contains_key("@a:b.example"));
        assert!(m.fields["master_keys"].is_empty());
        assert!(m.failures.is_empty());
    }

    #[test]
    fn timeouts_and_errors_are_failures() {
        let asks = ByServer::new();
        let m = merge(
            vec![
                ("x.example".into(), None),
                ("y.example".into(), Some(Err(FedError::Timeout))),
            ],
            &asks,
            &["one_time_keys"],
        );
        assert_eq!(m.failures["x.example"]["status"], 503);
        assert_eq!(m.failures["y.example"]["status"], 503);
    }

    #[test]
    fn timeout_defaults_and_caps() {
        let body = |v: Value| serde_json::from_value::<Map<String, Value>>(v).unwrap();
        assert_eq!(timeout_of(&body(json!({}))), DEFAULT_TIMEOUT);
        assert_eq!(
            timeout_of(&body(json!({"timeout": 500}))),
            Duration::from_millis(500)
        );
        assert_eq!(
            timeout_of(&body(json!({"timeout": 1u64 << 40}))),
            MAX_TIMEOUT
        );
    }
}

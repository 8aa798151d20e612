//! User-interactive authentication (client-server API, "User-Interactive
//! Authentication API"). Sessions live in PostgreSQL (`ui_auth_sessions`)
//! because the next request of a flow may land on any shard.
//!
//! It lives at the HTTP edge because it is an HTTP protocol: its answer is
//! a 401 carrying flows and a session, and its stage errors are errcodes.
//!
//! Supported stages: `m.login.dummy`, `m.login.password` (re-authentication
//! of the requester) and `m.login.registration_token` (registration only).

use std::sync::Arc;

use ruma::UserId;
use serde_json::{json, Map, Value};

use crate::auth::secret::secrets_equal;
use crate::auth::{password, store, tokens, username, AuthError};
use crate::http::{MatrixError, Response};
use crate::primitives::unix_ms_i64 as now_ms;
use crate::shard_state::ShardState;

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// Sessions older than this are forgotten (Synapse keeps them for days;
/// a flow that takes longer than an hour starts over).
const SESSION_LIFETIME_MS: i64 = 60 * 60 * 1000;

/// What a UIA-protected endpoint asks for.
pub struct Uia<'a> {
    /// Each flow is a list of stages; completing any one flow suffices.
    pub flows: Vec<Vec<&'static str>>,
    /// The endpoint (request path): a session is bound to it.
    pub uri: &'a str,
    /// The user who must re-authenticate (`m.login.password`), if any.
    pub user: Option<&'a UserId>,
    /// The registration token `m.login.registration_token` must match.
    pub registration_token: Option<Arc<str>>,
}

/// The result of one UIA step.
pub enum Outcome {
    /// A flow is complete: perform the request.
    Done,
    /// Answer with this 401 (flows, session, completed, maybe an error).
    Challenge(Response),
}

impl Uia<'_> {
    fn challenge(
        &self,
        session: &str,
        completed: &[String],
        error: Option<MatrixError>,
    ) -> Response {
        let flows: Vec<Value> = self
            .flows
            .iter()
            .map(|stages| json!({ "stages": stages }))
            .collect();
        let mut body = Map::new();
        if let Some(e) = error {
            body.insert("errcode".into(), e.errcode.into());
            body.insert("error".into(), e.error.into_owned().into());
        }
        body.insert("flows".into(), flows.into());
        body.insert("params".into(), json!({}));
        body.insert("session".into(), session.into());
        if !completed.is_empty() {
            body.insert("completed".into(), completed.into());
        }
        Response::json(401, &Value::Object(body))
    }

    fn is_done(&self, completed: &[String]) -> bool {
        self.flows
            .iter()
            .any(|f| f.iter().all(|s| completed.iter().any(|c| c == s)))
    }

    fn offers(&self, stage: &str) -> bool {
        self.flows.iter().any(|f| f.contains(&stage))
    }

    /// Process the request's `auth` dict (absent: start a session).
    pub async fn check(
        &self,
        state: &ShardState,
        auth: Option<&Value>,
    ) -> Result<Outcome, MatrixError> {
        let pool = &state.db;
        let auth = match auth {
            None | Some(Value::Null) => {
                let session = self.new_session(state).await?;
                return Ok(Outcome::Challenge(self.challenge(&session, &[], None)));
            }
            Some(Value::Object(a)) => a,
            Some(_) => return Err(MatrixError::bad_json("'auth' must be an object")),
        };
        let session = match auth.get("session") {
            Some(Value::String(s)) => {
                let row = pool
                    .query_opt(
                        "SELECT uri, user_id, completed FROM ui_auth_sessions \
                         WHERE session_id = $1 AND created_ts > $2",
                        &[&s.as_str(), &(now_ms() - SESSION_LIFETIME_MS)],
                    )
                    .await
                    .map_err(AuthError::from)?
                    .ok_or_else(|| MatrixError::bad_request("Unknown session ID"))?;
                let uri: String = row.get(0).map_err(AuthError::from)?;
                let owner: Option<String> = row.get(1).map_err(AuthError::from)?;
                if uri != self.uri || owner.as_deref() != self.user.map(|u| u.as_str()) {
                    return Err(MatrixError::forbidden(
                        "Requested operation has changed during the UI authentication session.",
                    ));
                }
                s.clone()
            }
            None => self.new_session(state).await?,
            Some(_) => return Err(MatrixError::bad_json("'auth.session' must be a string")),
        };
        let stage = match auth.get("type") {
            None => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(_) => return Err(MatrixError::bad_json("'auth.type' must be a string")),
        };
        if let Some(stage) = stage {
            if !self.offers(stage) {
                return Err(MatrixError::new(
                    400,
                    "M_UNRECOGNIZED",
                    format!("Unrecognized authentication type {stage}"),
                ));
            }
            if let Err(e) = self.verify(state, stage, auth).await {
                let completed = self.completed(state, &session).await?;
                return match e {
                    StageError::Retry(e) => Ok(Outcome::Challenge(self.challenge(
                        &session,
                        &completed,
                        Some(e),
                    ))),
                    StageError::Fatal(e) => Err(e),
                };
            }
            self.mark(state, &session, stage).await?;
        }
        let completed = self.completed(state, &session).await?;
        if self.is_done(&completed) {
            // One use per session: a replay must start over.
            pool.execute(
                "DELETE FROM ui_auth_sessions WHERE session_id = $1",
                &[&session],
            )
            .await
            .map_err(AuthError::from)?;
            return Ok(Outcome::Done);
        }
        Ok(Outcome::Challenge(
            self.challenge(&session, &completed, None),
        ))
    }

    async fn new_session(&self, state: &ShardState) -> Result<String, MatrixError> {
        let id = tokens::new_session_id()?;
        let now = now_ms();
        let user = self.user.map(|u| u.as_str().to_owned());
        state
            .db
            .pipeline_transaction(&[
                (
                    "DELETE FROM ui_auth_sessions WHERE created_ts < $1",
                    &[&(now - SESSION_LIFETIME_MS)],
                ),
                (
                    "INSERT INTO ui_auth_sessions (session_id, created_ts, uri, user_id) \
                     VALUES ($1, $2, $3, $4)",
                    &[&id, &now, &self.uri, &user],
                ),
            ])
            .await
            .map_err(AuthError::from)?;
        Ok(id)
    }

    async fn completed(
        &self,
        state: &ShardState,
        session: &str,
    ) -> Result<Vec<String>, MatrixError> {
        let row = state
            .db
            .query_opt(
                "SELECT completed FROM ui_auth_sessions WHERE session_id = $1",
                &[&session],
            )
            .await
            .map_err(AuthError::from)?;
        match row {
            Some(r) => Ok(r.get::<Vec<String>>(0).map_err(AuthError::from)?),
            None => Err(MatrixError::bad_request("Unknown session ID")),
        }
    }

    async fn mark(
        &self,
        state: &ShardState,
        session: &str,
        stage: &str,
    ) -> Result<(), MatrixError> {
        state
            .db
            .execute(
                "UPDATE ui_auth_sessions SET completed = array_append(completed, $2) \
                 WHERE session_id = $1 AND NOT ($2 = ANY(completed))",
                &[&session, &stage],
            )
            .await
            .map_err(AuthError::from)?;
        Ok(())
    }

    async fn verify(
        &self,
        state: &ShardState,
        stage: &str,
        auth: &Map<String, Value>,
    ) -> Result<(), StageError> {
        match stage {
            DUMMY => Ok(()),
            REGISTRATION_TOKEN => {
                let Some(Value::String(given)) = auth.get("token") else {
                    return Err(StageError::Fatal(MatrixError::missing_param(
                        "Missing registration token",
                    )));
                };
                if let Some(t) = &self.registration_token {
                    if secrets_equal(t.as_bytes(), given.as_bytes()) {
                        return Ok(());
                    }
                }
                // Else one an admin made (`auth::registration_tokens`).
                let now = crate::primitives::unix_ms_i64();
                match crate::auth::registration_tokens::consume(&state.db, given, now).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(StageError::Retry(MatrixError::unauthorized(
                        "Invalid registration token",
                    ))),
                    Err(e) => Err(StageError::Fatal(e.into())),
                }
            }
            PASSWORD => {
                let Some(me) = self.user else {
                    return Err(StageError::Fatal(MatrixError::bad_request(
                        "Password authentication needs a logged-in user",
                    )));
                };
                let (user, pw) = password_credentials(auth).map_err(StageError::Fatal)?;
                let named = username::resolve_login_user(&user, state.config.server_name.as_str());
                if named.as_deref() != Some(me) {
                    return Err(StageError::Fatal(MatrixError::forbidden(
                        "Requested user does not match the logged-in user",
                    )));
                }
                let info = store::login_info(&state.db, me)
                    .await
                    .map_err(|e| StageError::Fatal(e.into()))?;
                let hash = info.and_then(|i| i.password_hash);
                let ok = match hash {
                    Some(h) => password::verify(pw, h)
                        .await
                        .map_err(|e| StageError::Fatal(e.into()))?,
                    None => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(StageError::Retry(MatrixError::forbidden(
                        "Invalid password",
                    )))
                }
            }
            other => Err(StageError::Fatal(MatrixError::new(
                400,
                "M_UNRECOGNIZED",
                format!("Unrecognized authentication type {other}"),
            ))),
        }
    }
}

enum StageError {
    /// The stage failed; the client may try again (401 with the flows).
    Retry(MatrixError),
    /// The request is wrong in a way retrying will not fix.
    Fatal(MatrixError),
}

/// `(user, password)` of an `m.login.password` dict: `identifier` of type
/// `m.id.user`, or the deprecated top-level `user`.
pub fn password_credentials(d: &Map<String, Value>) -> Result<(String, String), MatrixError> {
    let user = match d.get("identifier") {
        Some(Value::Object(id)) => {
            match id.get("type") {
                Some(Value::String(t)) if t == "m.id.user" => {}
                Some(Value::String(t)) => {
                    return Err(MatrixError::new(
                        400,
                        "M_UNKNOWN",
                        format!("Unknown login identifier type {t}"),
                    ))
                }
                _ => return Err(MatrixError::bad_json("'identifier.type' must be a string")),
            }
            match id.get("user") {
                Some(Value::String(u)) => u.clone(),
                _ => return Err(MatrixError::bad_json("'identifier.user' must be a string")),
            }
        }
        Some(_) => return Err(MatrixError::bad_json("'identifier' must be an object")),
        None => match d.get("user") {
            Some(Value::String(u)) => u.clone(),
            _ => return Err(MatrixError::missing_param("Missing 'identifier'")),
        },
    };
    let password = match d.get("password") {
        Some(Value::String(p)) => p.clone(),
        Some(_) => return Err(MatrixError::bad_json("'password' must be a string")),
        None => return Err(MatrixError::missing_param("Missing 'password'")),
    };
    Ok((user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_shapes() {
        let d = |v: Value| v.as_object().cloned().unwrap();
        let ok = password_credentials(&d(json!({
            "identifier": {"type": "m.id.user", "user": "al"}, "password": "p"
        })))
        .unwrap();
        assert_eq!(ok, ("al".to_owned(), "p".to_owned()));
        let legacy = password_credentials(&d(json!({"user": "al", "password": "p"}))).unwrap();
        assert_eq!(legacy.0, "al");
        let e = password_credentials(&d(
            json!({"identifier": {"type": "m.id.user", "user": 1}, "password": "p"}),
        ));
        assert_eq!(e.unwrap_err().errcode, "M_BAD_JSON");
        let e = password_credentials(&d(json!({"user": "al"})));
        assert_eq!(e.unwrap_err().errcode, "M_MISSING_PARAM");
    }
}

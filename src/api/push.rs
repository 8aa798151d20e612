//! Push rules (client-server API, "Push Notifications" → "Push Rules: API"),
//! pushers and notifications, and `GET /capabilities` ("Capabilities
//! negotiation").
//!
//! Why this exists before push evaluation does: matrix-js-sdk (Element) reads
//! `/pushrules/` at start-up and stops its sync loop on a 404. The rules served
//! are the spec's server-default rules for the user (ruma's predefined set);
//! storing a user's own changes and evaluating rules per event are later work
//! (issue 11, item 3).

use std::rc::Rc;

use ruma::push::Ruleset;
use ruma::UserId;
use serde_json::{json, Value};

use crate::auth;
use crate::events::RoomVersion;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::server::ShardState;

/// Registers this module's client routes (v3 and r0).
pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::Get;
    let r = super::client(r, Get, "/capabilities", capabilities);
    let r = super::client(r, Get, "/pushrules/", all_rules);
    let r = super::client(r, Get, "/pushrules", all_rules);
    let r = super::client(r, Get, "/pushrules/global/", global_rules);
    let r = super::client(r, Get, "/pushrules/global/{kind}/{ruleId}", one_rule);
    let r = super::client(r, Get, "/pushers", pushers);
    super::client(r, Get, "/notifications", notifications)
}

fn default_ruleset(user_id: &UserId) -> Result<Value, MatrixError> {
    serde_json::to_value(Ruleset::server_default(user_id))
        .map_err(|_| MatrixError::unknown("internal error"))
}

/// `GET /pushrules/`: every rule set, under its scope (`global`).
async fn all_rules(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let rules = default_ruleset(&me.user_id)?;
    Ok(Response::json(200, &json!({ "global": rules })))
}

/// `GET /pushrules/global/`: the global rule set.
async fn global_rules(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    Ok(Response::json(200, &default_ruleset(&me.user_id)?))
}

/// `GET /pushrules/global/{kind}/{ruleId}`: one rule, `M_NOT_FOUND` if absent.
async fn one_rule(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let kind = req.param_str("kind")?.into_owned();
    let rule_id = req.param_str("ruleId")?.into_owned();
    let rules = default_ruleset(&me.user_id)?;
    let found = rules
        .get(&kind)
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .find(|r| r.get("rule_id").and_then(Value::as_str) == Some(rule_id.as_str()))
        })
        .cloned();
    match found {
        Some(rule) => Ok(Response::json(200, &rule)),
        None => Err(MatrixError::not_found("Unknown push rule")),
    }
}

/// `GET /pushers`: no pusher can be set yet, so the list is empty.
async fn pushers(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    Ok(Response::json(200, &json!({ "pushers": [] })))
}

/// `GET /notifications`: no rule is evaluated yet, so nothing has notified.
async fn notifications(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    Ok(Response::json(200, &json!({ "notifications": [] })))
}

/// `GET /capabilities` (authenticated, as the spec requires).
async fn capabilities(state: Rc<ShardState>, req: Request) -> HandlerResult {
    auth::require_user(&state, &req).await?;
    let available: serde_json::Map<String, Value> = RoomVersion::SUPPORTED
        .iter()
        .map(|v| (v.as_str().to_owned(), json!("stable")))
        .collect();
    Ok(Response::json(
        200,
        &json!({ "capabilities": {
            "m.room_versions": { "default": RoomVersion::DEFAULT.as_str(), "available": available },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
        }}),
    ))
}

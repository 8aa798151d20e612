//! Push rules (client-server API, "Push Notifications" → "Push Rules: API"),
//! pushers and notifications, and `GET /capabilities` ("Capabilities
//! negotiation"): thin handlers over `crate::push`.
//!
//! matrix-js-sdk (Element) reads `/pushrules/` at start-up and stops its
//! sync loop on a 404, so these must always answer.

use std::rc::Rc;

use ruma::push::RuleKind;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::events::RoomVersion;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::push::pushers::{self, PusherError};
use crate::push::rules::{self, Edit, RuleError};
use crate::push::store::{self, PushError};
use crate::shard_state::ShardState;

/// Registers this module's client routes (v3 and r0).
pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    use Method::{Delete, Get, Post, Put};
    const RULE: &str = "/pushrules/global/{kind}/{ruleId}";
    let r = super::client(r, Get, "/capabilities", capabilities);
    let r = super::client(r, Get, "/pushrules/", all_rules);
    let r = super::client(r, Get, "/pushrules", all_rules);
    let r = super::client(r, Get, "/pushrules/global/", global_rules);
    let r = super::client(r, Get, "/pushrules/global", global_rules);
    let r = super::client(r, Get, RULE, get_rule);
    let r = super::client(r, Put, RULE, put_rule);
    let r = super::client(r, Delete, RULE, delete_rule);
    let r = super::client(r, Get, &format!("{RULE}/enabled"), get_enabled);
    let r = super::client(r, Put, &format!("{RULE}/enabled"), put_enabled);
    let r = super::client(r, Get, &format!("{RULE}/actions"), get_actions);
    let r = super::client(r, Put, &format!("{RULE}/actions"), put_actions);
    let r = super::client(r, Get, "/pushers", pushers);
    let r = super::client(r, Post, "/pushers/set", set_pusher);
    super::client(r, Get, "/notifications", notifications)
}

fn rule_error(e: RuleError) -> MatrixError {
    match e {
        RuleError::NotFound(m) => MatrixError::not_found(m),
        RuleError::InvalidParam(m) => MatrixError::invalid_param(m),
        RuleError::BadJson(m) => MatrixError::bad_json(m),
        RuleError::Refused(m) => MatrixError::bad_request(m),
    }
}

fn push_error(e: PushError) -> MatrixError {
    match e {
        PushError::Rule(e) => rule_error(e),
        PushError::Store(e) => MatrixError::from(e),
    }
}

/// The `{kind}` and `{ruleId}` of the path.
fn rule_path(req: &Request) -> Result<(RuleKind, String), MatrixError> {
    let kind = rules::parse_kind(&req.param_str("kind")?).map_err(rule_error)?;
    Ok((kind, req.param_str("ruleId")?.into_owned()))
}

async fn load(state: &ShardState, user: &ruma::UserId) -> Result<ruma::push::Ruleset, MatrixError> {
    Ok(store::load(&state.db, user).await?)
}

async fn change(state: &ShardState, user: ruma::OwnedUserId, edit: Edit) -> HandlerResult {
    store::change(&state.mesh, user, edit)
        .await
        .map_err(push_error)?;
    Ok(Response::json(200, &json!({})))
}

/// `GET /pushrules/`: every rule set, under its scope (`global`).
async fn all_rules(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let set = load(&state, &me.user_id).await?;
    Ok(Response::json(
        200,
        &json!({ "global": rules::to_json(&set) }),
    ))
}

/// `GET /pushrules/global/`: the global rule set.
async fn global_rules(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let set = load(&state, &me.user_id).await?;
    Ok(Response::json(200, &rules::to_json(&set)))
}

/// `GET /pushrules/global/{kind}/{ruleId}`: one rule, `M_NOT_FOUND` if absent.
async fn get_rule(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (kind, id) = rule_path(&req)?;
    let set = load(&state, &me.user_id).await?;
    let rule = rules::rule_json(&set, &kind, &id).map_err(rule_error)?;
    Ok(Response::json(200, &rule))
}

/// `PUT /pushrules/global/{kind}/{ruleId}` (`before`/`after` in the query).
async fn put_rule(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (kind, id) = rule_path(&req)?;
    let body: Map<String, Value> = req.json()?;
    let rule = rules::new_rule(&kind, &id, &body).map_err(rule_error)?;
    let before = req.query_param("before").map(|s| s.into_owned());
    let after = req.query_param("after").map(|s| s.into_owned());
    let edit = Edit::Put {
        rule,
        before,
        after,
    };
    change(&state, me.user_id, edit).await
}

/// `DELETE /pushrules/global/{kind}/{ruleId}`: server-default rules stay.
async fn delete_rule(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (kind, rule_id) = rule_path(&req)?;
    change(&state, me.user_id, Edit::Delete { kind, rule_id }).await
}

/// `GET …/enabled`.
async fn get_enabled(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (kind, id) = rule_path(&req)?;
    let set = load(&state, &me.user_id).await?;
    let enabled = rules::enabled(&set, &kind, &id).map_err(rule_error)?;
    Ok(Response::json(200, &json!({ "enabled": enabled })))
}

/// `PUT …/enabled` with `{"enabled": bool}`.
async fn put_enabled(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (kind, rule_id) = rule_path(&req)?;
    let body: Map<String, Value> = req.json()?;
    let Some(enabled) = body.get("enabled").and_then(Value::as_bool) else {
        return Err(MatrixError::bad_json("'enabled' must be a boolean"));
    };
    let edit = Edit::Enabled {
        kind,
        rule_id,
        enabled,
    };
    change(&state, me.user_id, edit).await
}

/// `GET …/actions`.
async fn get_actions(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (kind, id) = rule_path(&req)?;
    let set = load(&state, &me.user_id).await?;
    let actions = rules::actions(&set, &kind, &id).map_err(rule_error)?;
    Ok(Response::json(200, &json!({ "actions": actions })))
}

/// `PUT …/actions` with `{"actions": [...]}`.
async fn put_actions(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let (kind, rule_id) = rule_path(&req)?;
    let body: Map<String, Value> = req.json()?;
    let actions = rules::parse_actions(body.get("actions")).map_err(rule_error)?;
    let edit = Edit::Actions {
        kind,
        rule_id,
        actions,
    };
    change(&state, me.user_id, edit).await
}

fn pusher_error(e: PusherError) -> MatrixError {
    match e {
        PusherError::MissingParam(m) => MatrixError::missing_param(m),
        PusherError::InvalidParam(m) => MatrixError::invalid_param(m),
        PusherError::BadJson(m) => MatrixError::bad_json(m),
    }
}

/// `GET /pushers`: the requester's pushers.
async fn pushers(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let list: Vec<Value> = pushers::list(&state.db, &me.user_id)
        .await?
        .iter()
        .map(pushers::Pusher::to_json)
        .collect();
    Ok(Response::json(200, &json!({ "pushers": list })))
}

/// `POST /pushers/set`: create, update or (`kind: null`) delete a pusher.
async fn set_pusher(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let body: Map<String, Value> = req.json()?;
    let change = pushers::parse(&body).map_err(pusher_error)?;
    pushers::set(&state.mesh, me.user_id, me.device_id, change).await?;
    Ok(Response::json(200, &json!({})))
}

/// Page size of `GET /notifications` without `limit` (as Synapse), and
/// the most one page holds.
const NOTIFICATIONS_DEFAULT: i64 = 50;
const NOTIFICATIONS_MAX: i64 = 1000;

/// `GET /notifications?from=&limit=&only=highlight`: the events that
/// notified the user, newest first.
async fn notifications(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let me = auth::require_user(&state, &req).await?;
    let from = match req.query_param("from") {
        None => None,
        Some(f) if f.is_empty() => None,
        Some(f) => Some(
            f.parse::<i64>()
                .map_err(|_| MatrixError::invalid_param("Invalid 'from' token"))?,
        ),
    };
    let limit = req
        .query_as::<i64>("limit")?
        .unwrap_or(NOTIFICATIONS_DEFAULT)
        .clamp(0, NOTIFICATIONS_MAX);
    let only_highlight = req.query_param("only").as_deref() == Some("highlight");
    let page = crate::push::counts::notifications(
        &state.db,
        me.user_id.as_str(),
        from,
        limit,
        only_highlight,
    )
    .await?;
    let mut body = json!({ "notifications": page.notifications });
    if let Some(t) = page.next_token {
        body["next_token"] = json!(t);
    }
    Ok(Response::json(200, &body))
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

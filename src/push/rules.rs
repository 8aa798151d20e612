//! A user's push rule set and the edits `/pushrules` makes to it (client-server
//! API "Push Notifications" → "Push Rules" and "Push Rules: API"), pure: no IO.
//!
//! What is stored is the user's whole rule set as the spec's `m.push_rules`
//! account data (`{"global": Ruleset}`). On every read it is merged with the
//! current server-default rules ([`effective`]), so a rule added to the
//! defaults by a newer ruma reaches users who changed a rule long ago, while
//! their `enabled`/`actions` choices on default rules are kept. The rule
//! logic itself (ordering with `before`/`after`, refusing ids starting with a
//! dot, refusing to delete a default rule) is ruma's `Ruleset`.

use ruma::push::{
    Action, AnyPushRuleRef, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule,
    NewPushRule, NewSimplePushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
};
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

/// The account-data type holding the rule set (spec "Push Rules": clients
/// also receive it as global account data in `/sync`).
pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

/// Why a push-rule request is refused; the HTTP edge picks the errcode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// No such rule (404).
    #[error("{0}")]
    NotFound(String),
    /// A path parameter is not acceptable: unknown kind, reserved or
    /// malformed rule id (400).
    #[error("{0}")]
    InvalidParam(String),
    /// The body has the wrong shape (400).
    #[error("{0}")]
    BadJson(String),
    /// The rule cannot be configured that way: `before`/`after` unknown,
    /// relative to a server-default rule, or contradictory; deleting a
    /// server-default rule (400, `M_UNKNOWN` as the spec's example).
    #[error("{0}")]
    Refused(String),
}

/// One change to a rule set.
#[derive(Debug, Clone)]
pub enum Edit {
    /// `PUT /pushrules/global/{kind}/{ruleId}`: create or replace a user rule.
    Put {
        rule: NewPushRule,
        before: Option<String>,
        after: Option<String>,
    },
    /// `DELETE /pushrules/global/{kind}/{ruleId}`.
    Delete { kind: RuleKind, rule_id: String },
    /// `PUT …/enabled`.
    Enabled {
        kind: RuleKind,
        rule_id: String,
        enabled: bool,
    },
    /// `PUT …/actions`.
    Actions {
        kind: RuleKind,
        rule_id: String,
        actions: Vec<Action>,
    },
}

/// The rule set a user has now: what is stored (if anything) merged with the
/// server defaults. A stored value that does not parse (it never should) is
/// ignored rather than failing every push-rule request of that user.
pub fn effective(user: &UserId, stored: Option<&Value>) -> Ruleset {
    let defaults = Ruleset::server_default(user);
    let Some(global) = stored.and_then(|s| s.get("global")) else {
        return defaults;
    };
    match serde_json::from_value::<Ruleset>(global.clone()) {
        Ok(mut rules) => {
            rules.update_with_server_default(defaults);
            rules
        }
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "stored push rules do not parse; using defaults");
            defaults
        }
    }
}

/// The account-data content storing `rules` (what `/sync` hands out too).
pub fn to_account_data(rules: &Ruleset) -> Value {
    json!({ "global": to_json(rules) })
}

/// The kinds a rule set always shows, empty or not.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// The rule set as the spec's JSON (`GET /pushrules/global/`). ruma leaves
/// out empty kinds (the spec has no default `content` rule any more); every
/// kind is listed, as Synapse does, so clients iterating one find an array.
pub fn to_json(rules: &Ruleset) -> Value {
    let mut v = serde_json::to_value(rules).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        for kind in KINDS {
            o.entry(kind).or_insert_with(|| json!([]));
        }
    }
    v
}

/// The rule kinds of the spec, from a path segment.
pub fn parse_kind(kind: &str) -> Result<RuleKind, RuleError> {
    match kind {
        "override" => Ok(RuleKind::Override),
        "underride" => Ok(RuleKind::Underride),
        "sender" => Ok(RuleKind::Sender),
        "room" => Ok(RuleKind::Room),
        "content" => Ok(RuleKind::Content),
        _ => Err(RuleError::InvalidParam(format!(
            "Unknown push rule kind {kind:?}"
        ))),
    }
}

fn not_found() -> RuleError {
    RuleError::NotFound("The push rule was not found.".into())
}

/// One rule as the spec's JSON (`GET /pushrules/global/{kind}/{ruleId}`).
pub fn rule_json(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<Value, RuleError> {
    let rule = rules.get(kind.clone(), rule_id).ok_or_else(not_found)?;
    let v = match rule {
        AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) => serde_json::to_value(r),
        AnyPushRuleRef::Content(r) => serde_json::to_value(r),
        AnyPushRuleRef::Room(r) => serde_json::to_value(r),
        AnyPushRuleRef::Sender(r) => serde_json::to_value(r),
        _ => return Err(not_found()),
    };
    v.map_err(|_| not_found())
}

/// Whether the rule is enabled (`GET …/enabled`).
pub fn enabled(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<bool, RuleError> {
    Ok(rules
        .get(kind.clone(), rule_id)
        .ok_or_else(not_found)?
        .enabled())
}

/// The rule's actions (`GET …/actions`).
pub fn actions(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<Value, RuleError> {
    let rule = rules.get(kind.clone(), rule_id).ok_or_else(not_found)?;
    serde_json::to_value(rule.actions()).map_err(|_| not_found())
}

/// Parses an `actions` array. The spec's actions are `notify` and
/// `set_tweak` objects; `dont_notify` and `coalesce` are obsolete (spec v1.7)
/// but still sent by older clients, so they are accepted and kept as given.
pub fn parse_actions(v: Option<&Value>) -> Result<Vec<Action>, RuleError> {
    let Some(Value::Array(list)) = v else {
        return Err(RuleError::BadJson("'actions' must be an array".into()));
    };
    for a in list {
        let known = match a {
            Value::String(s) => matches!(s.as_str(), "notify" | "dont_notify" | "coalesce"),
            Value::Object(o) => o.get("set_tweak").is_some_and(Value::is_string),
            _ => false,
        };
        if !known {
            return Err(RuleError::BadJson(format!("Unrecognised action {a}")));
        }
    }
    serde_json::from_value(Value::Array(list.clone()))
        .map_err(|e| RuleError::BadJson(format!("Invalid actions: {e}")))
}

/// The rule a `PUT` body describes for `kind` and `rule_id`.
pub fn new_rule(
    kind: &RuleKind,
    rule_id: &str,
    body: &Map<String, Value>,
) -> Result<NewPushRule, RuleError> {
    // Checked before the body, so a reserved id is refused whatever it says.
    if rule_id.starts_with('.') {
        return Err(RuleError::InvalidParam(
            "Rule ids starting with '.' are reserved for server-default rules".into(),
        ));
    }
    if rule_id.is_empty() || rule_id.contains('/') || rule_id.contains('\\') {
        return Err(RuleError::InvalidParam("Invalid rule id".into()));
    }
    let actions = parse_actions(body.get("actions"))?;
    let id = rule_id.to_owned();
    Ok(match kind {
        RuleKind::Override | RuleKind::Underride => {
            let conditions: Vec<PushCondition> = match body.get("conditions") {
                None | Some(Value::Null) => Vec::new(),
                Some(c @ Value::Array(_)) => serde_json::from_value(c.clone())
                    .map_err(|e| RuleError::BadJson(format!("Invalid conditions: {e}")))?,
                Some(_) => return Err(RuleError::BadJson("'conditions' must be an array".into())),
            };
            let rule = NewConditionalPushRule::new(id, conditions, actions);
            if *kind == RuleKind::Override {
                NewPushRule::Override(rule)
            } else {
                NewPushRule::Underride(rule)
            }
        }
        RuleKind::Content => {
            let Some(Value::String(pattern)) = body.get("pattern") else {
                return Err(RuleError::BadJson(
                    "Content rules need a 'pattern' string".into(),
                ));
            };
            NewPushRule::Content(NewPatternedPushRule::new(id, pattern.clone(), actions))
        }
        RuleKind::Room => {
            let room = OwnedRoomId::try_from(id)
                .map_err(|_| RuleError::InvalidParam("A room rule's id is a room id".into()))?;
            NewPushRule::Room(NewSimplePushRule::new(room, actions))
        }
        RuleKind::Sender => {
            let user = OwnedUserId::try_from(id)
                .map_err(|_| RuleError::InvalidParam("A sender rule's id is a user id".into()))?;
            NewPushRule::Sender(NewSimplePushRule::new(user, actions))
        }
        _ => return Err(RuleError::InvalidParam("Unknown push rule kind".into())),
    })
}

/// Applies `edit` to `rules` (the plan: the caller stores the result).
pub fn apply(rules: &mut Ruleset, edit: Edit) -> Result<(), RuleError> {
    match edit {
        Edit::Put {
            rule,
            before,
            after,
        } => rules
            .insert(rule, after.as_deref(), before.as_deref())
            .map_err(|e| match e {
                InsertPushRuleError::ServerDefaultRuleId | InsertPushRuleError::InvalidRuleId => {
                    RuleError::InvalidParam(e.to_string())
                }
                InsertPushRuleError::UnknownRuleId => RuleError::Refused(format!(
                    "before/after rule not found: {}",
                    before.or(after).unwrap_or_default()
                )),
                other => RuleError::Refused(other.to_string()),
            }),
        Edit::Delete { kind, rule_id } => rules.remove(kind, &rule_id).map_err(|e| match e {
            RemovePushRuleError::ServerDefault => {
                RuleError::Refused("Server-default rules cannot be deleted".into())
            }
            _ => not_found(),
        }),
        Edit::Enabled {
            kind,
            rule_id,
            enabled,
        } => rules
            .set_enabled(kind, &rule_id, enabled)
            .map_err(|_| not_found()),
        Edit::Actions {
            kind,
            rule_id,
            actions,
        } => rules
            .set_actions(kind, &rule_id, actions)
            .map_err(|_| not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::user_id;

    fn ids(rules: &Ruleset, kind: &str) -> Vec<String> {
        to_json(rules)[kind]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["rule_id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn put(
        rules: &mut Ruleset,
        kind: &str,
        id: &str,
        body: Value,
        b: Option<&str>,
        a: Option<&str>,
    ) -> Result<(), RuleError> {
        let kind = parse_kind(kind)?;
        let rule = new_rule(&kind, id, body.as_object().unwrap())?;
        apply(
            rules,
            Edit::Put {
                rule,
                before: b.map(str::to_owned),
                after: a.map(str::to_owned),
            },
        )
    }

    #[test]
    fn defaults_have_the_spec_rules() {
        let rules = effective(user_id!("@a:x"), None);
        let o = ids(&rules, "override");
        assert_eq!(o[0], ".m.rule.master");
        for id in [
            ".m.rule.suppress_notices",
            ".m.rule.invite_for_me",
            ".m.rule.is_user_mention",
            ".m.rule.is_room_mention",
            ".m.rule.tombstone",
            ".m.rule.reaction",
        ] {
            assert!(o.contains(&id.to_owned()), "{id}");
        }
        let u = ids(&rules, "underride");
        assert!(u.contains(&".m.rule.room_one_to_one".to_owned()));
        assert!(u.contains(&".m.rule.encrypted".to_owned()));
    }

    #[test]
    fn put_orders_and_refuses() {
        let mut r = effective(user_id!("@a:x"), None);
        let body = json!({"pattern": "cake*", "actions": ["notify"]});
        put(&mut r, "content", "one", body.clone(), None, None).unwrap();
        put(&mut r, "content", "two", body.clone(), None, None).unwrap();
        // Newest first among user rules of a kind.
        assert_eq!(ids(&r, "content")[..2], ["two", "one"]);
        put(&mut r, "content", "three", body.clone(), None, Some("one")).unwrap();
        assert_eq!(ids(&r, "content")[..3], ["two", "one", "three"]);
        put(&mut r, "content", "four", body.clone(), Some("two"), None).unwrap();
        assert_eq!(ids(&r, "content")[..4], ["four", "two", "one", "three"]);
        assert!(matches!(
            put(&mut r, "content", "x", body.clone(), Some("nope"), None),
            Err(RuleError::Refused(_))
        ));
        assert!(matches!(
            put(&mut r, "content", ".m.x", body.clone(), None, None),
            Err(RuleError::InvalidParam(_))
        ));
        assert!(matches!(
            put(
                &mut r,
                "content",
                "x",
                json!({"actions": ["notify"]}),
                None,
                None
            ),
            Err(RuleError::BadJson(_))
        ));
        assert!(matches!(
            put(
                &mut r,
                "override",
                "x",
                json!({"actions": ["fly"]}),
                None,
                None
            ),
            Err(RuleError::BadJson(_))
        ));
        assert!(matches!(
            put(
                &mut r,
                "room",
                "not-a-room",
                json!({"actions": []}),
                None,
                None
            ),
            Err(RuleError::InvalidParam(_))
        ));
        assert!(matches!(
            parse_kind("global"),
            Err(RuleError::InvalidParam(_))
        ));
    }

    #[test]
    fn defaults_cannot_be_deleted_but_can_be_disabled_and_survive_storage() {
        let user = user_id!("@a:x");
        let mut r = effective(user, None);
        assert!(matches!(
            apply(
                &mut r,
                Edit::Delete {
                    kind: RuleKind::Override,
                    rule_id: ".m.rule.master".into()
                }
            ),
            Err(RuleError::Refused(_))
        ));
        apply(
            &mut r,
            Edit::Enabled {
                kind: RuleKind::Override,
                rule_id: ".m.rule.master".into(),
                enabled: true,
            },
        )
        .unwrap();
        put(
            &mut r,
            "override",
            "mine",
            json!({"actions": [], "conditions": []}),
            None,
            None,
        )
        .unwrap();
        let stored = to_account_data(&r);
        let back = effective(user, Some(&stored));
        assert!(enabled(&back, &RuleKind::Override, ".m.rule.master").unwrap());
        assert_eq!(ids(&back, "override")[..2], [".m.rule.master", "mine"]);
        assert!(matches!(
            enabled(&back, &RuleKind::Override, "gone"),
            Err(RuleError::NotFound(_))
        ));
        // Garbage in storage falls back to the defaults.
        let junk = json!({"global": {"override": 3}});
        assert_eq!(
            ids(&effective(user, Some(&junk)), "override")[0],
            ".m.rule.master"
        );
    }
}

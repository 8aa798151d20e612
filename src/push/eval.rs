//! Evaluating push rules for one event and every member who may be
//! notified (client-server API "Push Notifications" → "Push Rules"), pure:
//! no IO. The rules themselves are ruma's (`Ruleset::get_actions`).
//!
//! **Once per distinct rule set, not once per member.** What a user's rules
//! decide for an event depends on the user only through their user id
//! (`.m.rule.is_user_mention`, `.m.rule.invite_for_me`, the "own event"
//! check, user-written conditions naming them) and, for the deprecated
//! `contains_display_name` condition, their display name. The sender's
//! power level (`sender_notification_permission`) and the member count are
//! the room's. So members are grouped by [`UserRules::group`] (the rule
//! set with the user's own id replaced by a placeholder, plus the display
//! name when a rule reads it): for members whose id does not occur in the
//! event's JSON at all (compared case-insensitively, as ruma's
//! `event_match` is), every condition comparing against their id fails for
//! all of them alike, so one evaluation for one of them holds for the
//! whole group. Members named in the event (mentioned, the invitee) are
//! evaluated alone. In a big room with default rules that is one
//! evaluation plus one per mention.

use std::collections::HashMap;
use std::rc::Rc;

use ruma::push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, UInt, UserId};
use serde_json::Value;

/// Stands for the user's own id in a group key.
const SELF_MARK: &str = "\u{1}self\u{1}";

/// A user's rule set as the evaluator needs it.
#[derive(Debug)]
pub struct UserRules {
    /// Users with equal keys decide alike on events not naming them.
    pub group: Rc<str>,
    /// `None`: the server defaults (built for the user when needed).
    pub rules: Option<Rc<Ruleset>>,
    /// A rule reads the display name (`contains_display_name`).
    pub uses_display_name: bool,
}

impl UserRules {
    /// The server-default rules: everyone with them shares one group.
    pub fn server_default() -> UserRules {
        UserRules {
            group: Rc::from("default"),
            rules: None,
            uses_display_name: false,
        }
    }

    /// A user's own (stored) rule set.
    pub fn custom(user: &UserId, rules: Ruleset) -> UserRules {
        let text = serde_json::to_string(&rules).unwrap_or_default();
        let uses_display_name = text.contains("\"contains_display_name\"");
        let group = format!("custom:{}", text.replace(user.as_str(), SELF_MARK));
        UserRules {
            group: Rc::from(group),
            rules: Some(Rc::new(rules)),
            uses_display_name,
        }
    }

    /// The rules to evaluate for `user`. `named`: the event names the user
    /// (or the placeholder), so the defaults must be the user's own;
    /// otherwise the placeholder's shared copy decides alike (see the
    /// module doc) and nothing is built.
    fn ruleset(&self, user: &UserId, named: bool) -> Rc<Ruleset> {
        match &self.rules {
            Some(r) => Rc::clone(r),
            None if named => Rc::new(Ruleset::server_default(user)),
            None => DEFAULT_FOR_NOBODY.with(Rc::clone),
        }
    }
}

/// A user id no real member has: the server-default rules built for it
/// stand for any member the event does not name. Why: building
/// `Ruleset::server_default` per evaluation was ~2 % of a send's CPU.
const PLACEHOLDER: &str = "@hearth.push.placeholder:placeholder.invalid";

thread_local! {
    static DEFAULT_FOR_NOBODY: Rc<Ruleset> = Rc::new(match UserId::parse(PLACEHOLDER) {
        Ok(u) => Ruleset::server_default(&u),
        Err(_) => Ruleset::new(),
    });
}

/// One member who may be notified.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub user_id: OwnedUserId,
    pub display_name: String,
    pub rules: Rc<UserRules>,
}

/// The room-level inputs of the rules.
#[derive(Debug, Clone)]
pub struct RoomInputs {
    pub room_id: OwnedRoomId,
    pub member_count: u64,
    pub power_levels: Option<PushConditionPowerLevelsCtx>,
}

/// Members who get the same (notifying) actions.
#[derive(Debug, Clone)]
pub struct Notified {
    pub actions: Vec<Action>,
    pub users: Vec<OwnedUserId>,
}

impl Notified {
    pub fn highlight(&self) -> bool {
        self.actions.iter().any(Action::is_highlight)
    }
}

/// What [`evaluate`] found, and what it cost.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Only groups whose actions notify.
    pub notified: Vec<Notified>,
    /// ruma evaluations run (≤ candidates).
    pub evaluations: usize,
}

fn context(room: &RoomInputs, user: &UserId, display_name: &str) -> PushConditionRoomCtx {
    let ctx = PushConditionRoomCtx::new(
        room.room_id.clone(),
        UInt::new_saturating(room.member_count),
        user.to_owned(),
        display_name.to_owned(),
    );
    match &room.power_levels {
        Some(p) => ctx.with_power_levels(p.clone()),
        None => ctx,
    }
}

async fn actions_for(
    event: &Raw<Value>,
    room: &RoomInputs,
    c: &Candidate,
    named: bool,
    evaluations: &mut usize,
) -> Vec<Action> {
    *evaluations += 1;
    let ctx = context(room, &c.user_id, &c.display_name);
    let rules = c.rules.ruleset(&c.user_id, named);
    rules.get_actions(event, &ctx).await.to_vec()
}

/// The actions of every candidate's rules for `event` (client format JSON),
/// grouped; the sender is never notified of their own event.
pub async fn evaluate(
    event: &Value,
    sender: &UserId,
    room: &RoomInputs,
    candidates: &[Candidate],
) -> Outcome {
    let mut out = Outcome::default();
    let Ok(raw) = serde_json::value::to_raw_value(event) else {
        return out;
    };
    let lower = raw.get().to_lowercase();
    let raw: Raw<Value> = Raw::from_json(raw);
    // An event naming the placeholder has every member evaluated alone.
    let everyone_alone = lower.contains(PLACEHOLDER);
    let named = |u: &UserId| everyone_alone || lower.contains(&u.as_str().to_lowercase());
    // Group key → the shared actions (once computed).
    let mut shared: HashMap<(Rc<str>, Option<&str>), Vec<Action>> = HashMap::new();
    // Actions have no `PartialEq`: groups of users are keyed by their JSON.
    let mut by_actions: Vec<(String, Notified)> = Vec::new();
    let mut add = |actions: &[Action], user: &OwnedUserId| {
        if !actions.iter().any(Action::should_notify) {
            return;
        }
        let key = serde_json::to_string(actions).unwrap_or_default();
        match by_actions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => n.users.push(user.clone()),
            None => by_actions.push((
                key,
                Notified {
                    actions: actions.to_vec(),
                    users: vec![user.clone()],
                },
            )),
        }
    };
    for c in candidates {
        if c.user_id == sender {
            continue;
        }
        if named(&c.user_id) {
            let a = actions_for(&raw, room, c, true, &mut out.evaluations).await;
            add(&a, &c.user_id);
            continue;
        }
        let key = (
            c.rules.group.clone(),
            c.rules.uses_display_name.then_some(c.display_name.as_str()),
        );
        if !shared.contains_key(&key) {
            let a = actions_for(&raw, room, c, false, &mut out.evaluations).await;
            shared.insert(key.clone(), a);
        }
        if let Some(a) = shared.get(&key) {
            add(a, &c.user_id);
        }
    }
    out.notified = by_actions.into_iter().map(|(_, n)| n).collect();
    out
}

/// The thread an event counts in (spec "Threading" → "Read receipts and
/// notifications"): the root of an `m.thread` relation, else `main`.
pub fn thread_of(event: &Value) -> String {
    let rel = &event["content"]["m.relates_to"];
    match (rel["rel_type"].as_str(), rel["event_id"].as_str()) {
        (Some("m.thread"), Some(root)) => root.to_owned(),
        _ => "main".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{room_id, user_id};
    use serde_json::json;

    fn room(n: u64) -> RoomInputs {
        RoomInputs {
            room_id: room_id!("!r:x").to_owned(),
            member_count: n,
            power_levels: None,
        }
    }

    fn members(n: usize) -> Vec<Candidate> {
        let d = Rc::new(UserRules::server_default());
        (0..n)
            .map(|i| Candidate {
                user_id: OwnedUserId::try_from(format!("@u{i}:x")).unwrap(),
                display_name: format!("User {i}"),
                rules: d.clone(),
            })
            .collect()
    }

    fn msg(body: &str, mentions: &[&str]) -> Value {
        json!({
            "type": "m.room.message", "sender": "@u0:x", "room_id": "!r:x",
            "event_id": "$e", "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": body, "m.mentions": {"user_ids": mentions}},
        })
    }

    /// Every candidate evaluated alone: what grouping must reproduce.
    fn one_by_one(event: &Value, room: &RoomInputs, cs: &[Candidate]) -> Vec<(String, Value)> {
        let raw: Raw<Value> = Raw::from_json(serde_json::value::to_raw_value(event).unwrap());
        let mut out = Vec::new();
        for c in cs {
            if c.user_id.as_str() == event["sender"] {
                continue;
            }
            let mut n = 0;
            let a = futures_executor(actions_for(&raw, room, c, true, &mut n));
            if a.iter().any(Action::should_notify) {
                out.push((c.user_id.to_string(), serde_json::to_value(&a).unwrap()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn flat(o: &Outcome) -> Vec<(String, Value)> {
        let mut v: Vec<_> = o
            .notified
            .iter()
            .flat_map(|n| {
                let a = serde_json::to_value(&n.actions).unwrap();
                n.users.iter().map(move |u| (u.to_string(), a.clone()))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The evaluator awaits nothing (no thread subscriptions): polling once
    /// finishes it.
    fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("evaluation awaited"),
        }
    }

    #[test]
    fn a_big_room_with_default_rules_costs_one_evaluation_plus_mentions() {
        let cs = members(1000);
        let r = room(1000);
        let e = msg("hello", &[]);
        let o = futures_executor(evaluate(&e, user_id!("@u0:x"), &r, &cs));
        assert_eq!(o.evaluations, 1);
        assert_eq!(flat(&o), one_by_one(&e, &r, &cs));
        assert_eq!(flat(&o).len(), 999);
        assert!(!o.notified[0].highlight());

        let e = msg("hi @u7:x and @U9:X", &["@u7:x"]);
        let o = futures_executor(evaluate(&e, user_id!("@u0:x"), &r, &cs));
        // The group, @u7:x (mentioned) and @u9:x (named in the body).
        assert_eq!(o.evaluations, 3);
        assert_eq!(flat(&o), one_by_one(&e, &r, &cs));
        let hl: Vec<_> = o.notified.iter().filter(|n| n.highlight()).collect();
        assert_eq!(hl.len(), 1);
        assert_eq!(hl[0].users, [user_id!("@u7:x").to_owned()]);
    }

    #[test]
    #[allow(deprecated)] // contains_display_name: users may still have it.
    fn one_to_one_and_custom_rules_match_evaluating_each_member() {
        let mut cs = members(2);
        let r = room(2);
        let e = msg("psst", &[]);
        let o = futures_executor(evaluate(&e, user_id!("@u0:x"), &r, &cs));
        assert_eq!(flat(&o), one_by_one(&e, &r, &cs));
        // .m.rule.room_one_to_one: notify with a sound.
        assert!(o.notified[0].actions.iter().any(|a| a.sound().is_some()));

        // Two users with the same custom rule (a keyword, and
        // contains_display_name) share a group per display name; a third
        // mutes the room.
        cs = members(6);
        let mut kw = Ruleset::server_default(user_id!("@u1:x"));
        let rule: ruma::push::NewPushRule =
            ruma::push::NewPushRule::Content(ruma::push::NewPatternedPushRule::new(
                "cake".into(),
                "cake".into(),
                vec![
                    Action::Notify,
                    Action::SetTweak(ruma::push::Tweak::Highlight(
                        ruma::push::HighlightTweakValue::Yes,
                    )),
                ],
            ));
        kw.insert(rule.clone(), None, None).unwrap();
        let dn = ruma::push::NewPushRule::Override(ruma::push::NewConditionalPushRule::new(
            "dn".into(),
            vec![ruma::push::PushCondition::ContainsDisplayName],
            vec![Action::Notify],
        ));
        kw.insert(dn.clone(), None, None).unwrap();
        for i in [1, 2] {
            let u = OwnedUserId::try_from(format!("@u{i}:x")).unwrap();
            let mut set = Ruleset::server_default(&u);
            set.insert(rule.clone(), None, None).unwrap();
            set.insert(dn.clone(), None, None).unwrap();
            cs[i].rules = Rc::new(UserRules::custom(&u, set));
        }
        assert_eq!(cs[1].rules.group, cs[2].rules.group);
        let u3 = user_id!("@u3:x");
        let mut mute = Ruleset::server_default(u3);
        mute.insert(
            ruma::push::NewPushRule::Room(ruma::push::NewSimplePushRule::new(
                r.room_id.clone(),
                vec![],
            )),
            None,
            None,
        )
        .unwrap();
        cs[3].rules = Rc::new(UserRules::custom(u3, mute));
        for body in ["I like cake", "hello User 2", "plain", "cake for @u4:x"] {
            let e = msg(body, &[]);
            let o = futures_executor(evaluate(&e, user_id!("@u0:x"), &r, &cs));
            assert_eq!(flat(&o), one_by_one(&e, &r, &cs), "{body}");
        }
        let o = futures_executor(evaluate(&msg("cake", &[]), user_id!("@u0:x"), &r, &cs));
        // Default group, the keyword group (two display names), the mute.
        assert_eq!(o.evaluations, 4);
    }

    /// The shared default rules are built for a placeholder id: an invite
    /// for a member, or for the placeholder itself, still decides as each
    /// member's own rules do.
    #[test]
    fn invites_match_evaluating_each_member_even_for_the_placeholder() {
        let cs = members(5);
        let r = room(5);
        for target in ["@u3:x", PLACEHOLDER] {
            let e = json!({
                "type": "m.room.member", "sender": "@u0:x", "room_id": "!r:x",
                "event_id": "$i", "origin_server_ts": 1, "state_key": target,
                "content": {"membership": "invite"},
            });
            let o = futures_executor(evaluate(&e, user_id!("@u0:x"), &r, &cs));
            assert_eq!(flat(&o), one_by_one(&e, &r, &cs), "{target}");
        }
    }

    #[test]
    fn threads() {
        let e = json!({"content": {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}});
        assert_eq!(thread_of(&e), "$root");
        assert_eq!(thread_of(&msg("x", &[])), "main");
    }
}

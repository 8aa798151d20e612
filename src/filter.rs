//! Filters (client-server API "Filtering", `data/api/client-server/
//! definitions/sync_filter.yaml`): what a client wants in its syncs, and
//! the `RoomEventFilter` of `/messages` and `/context`. One model for both:
//! `/messages` applies a [`RoomEventFilter`]'s type, sender and URL
//! conditions in SQL (`rooms::timeline::page`), so a page is `limit`
//! *matching* events; `/sync` applies the same conditions in memory.
//!
//! Parsed leniently (unknown keys are ignored, as the spec's objects are
//! open) but with the declared types enforced, so a wrong shape is a 400
//! `M_BAD_JSON` and not a silently ignored field.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Most entries a filter list may have: bounds the SQL arrays of
/// `/messages` and the work of matching.
const MAX_LIST: usize = 1000;

/// Why a filter was refused (the HTTP edge maps it: `NotJson` is 400
/// `M_NOT_JSON`, `BadJson` 400 `M_BAD_JSON`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter is not JSON: {0}")]
    NotJson(String),
    #[error("invalid filter: {0}")]
    BadJson(String),
}

/// Default `timeline.limit` (Synapse's default too).
pub const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Upper bound on any `limit`: bounds the work one sync can ask for.
pub const MAX_LIMIT: usize = 1000;

/// A whole filter (`POST /user/{userId}/filter` body, or `/sync?filter=`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Fields to keep in each event (dot paths, `\.` escapes a dot).
    pub event_fields: Option<Vec<String>>,
    /// `client` (default) or `federation` (served as `client` too: hearth
    /// has no use for federation-format events in a client sync).
    pub event_format: Option<EventFormat>,
    pub presence: EventFilter,
    pub account_data: EventFilter,
    pub room: RoomFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    Client,
    Federation,
}

/// `EventFilter`: types and senders to include or exclude.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    pub limit: Option<u64>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
}

/// `RoomEventFilter`: an [`EventFilter`] plus rooms, URLs and lazy loading.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomEventFilter {
    #[serde(flatten)]
    pub base: EventFilter,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub contains_url: Option<bool>,
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
    pub unread_thread_notifications: bool,
}

/// `RoomFilter`: which rooms, and a filter per room section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
    pub timeline: RoomEventFilter,
    pub state: RoomEventFilter,
    pub ephemeral: RoomEventFilter,
    pub account_data: RoomEventFilter,
}

/// `*` matches any sequence of characters (spec: `types`/`not_types`).
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || !value.ends_with(last) || value.len() < first.len() + last.len()
    {
        return false;
    }
    // Both ends are whole prefixes/suffixes: the slice is on char boundaries.
    let mut rest = &value[first.len()..value.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Filter {
    /// Parses and validates a filter from JSON.
    pub fn from_value(v: &Value) -> Result<Filter, FilterError> {
        if !v.is_object() {
            return Err(FilterError::BadJson(
                "a filter must be a JSON object".into(),
            ));
        }
        let f: Filter =
            serde_path_to_error::deserialize(v).map_err(|e| FilterError::BadJson(e.to_string()))?;
        f.validate()?;
        Ok(f)
    }

    /// Parses a filter from raw bytes: 400 `M_NOT_JSON` when not JSON.
    pub fn from_slice(b: &[u8]) -> Result<(Filter, Value), FilterError> {
        let v: Value =
            serde_json::from_slice(b).map_err(|e| FilterError::NotJson(e.to_string()))?;
        Ok((Filter::from_value(&v)?, v))
    }

    fn validate(&self) -> Result<(), FilterError> {
        self.presence.validate("presence")?;
        self.account_data.validate("account_data")?;
        let r = &self.room;
        check_prefix(r.rooms.iter().flatten().chain(&r.not_rooms), '!', "room")?;
        for (name, f) in [
            ("timeline", &r.timeline),
            ("state", &r.state),
            ("ephemeral", &r.ephemeral),
            ("account_data", &r.account_data),
        ] {
            f.base.validate(name)?;
            check_prefix(f.rooms.iter().flatten().chain(&f.not_rooms), '!', name)?;
        }
        Ok(())
    }

    /// The timeline limit to apply (default 10, at most [`MAX_LIMIT`]).
    pub fn timeline_limit(&self) -> usize {
        self.room
            .timeline
            .base
            .limit
            .map_or(DEFAULT_TIMELINE_LIMIT, |l| {
                usize::try_from(l).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)
            })
    }

    /// Whether the room is wanted at all (`room.rooms` / `room.not_rooms`).
    pub fn allows_room(&self, room_id: &str) -> bool {
        allowed(
            room_id,
            self.room.rooms.as_deref(),
            &self.room.not_rooms,
            |a, b| a == b,
        )
    }

    /// Whether state events must be limited to the timeline's senders
    /// (spec "Lazy-loading room members").
    pub fn lazy_load_members(&self) -> bool {
        self.room.state.lazy_load_members
    }

    /// Applies `event_fields` (if any) to a client-format event.
    pub fn project(&self, ev: Value) -> Value {
        match &self.event_fields {
            Some(fields) => project_fields(&ev, fields),
            None => ev,
        }
    }
}

fn check_prefix<'a>(
    ids: impl Iterator<Item = &'a String>,
    prefix: char,
    what: &str,
) -> Result<(), FilterError> {
    for id in ids {
        if !id.starts_with(prefix) {
            return Err(FilterError::BadJson(format!(
                "{what}: {id:?} does not start with '{prefix}'"
            )));
        }
    }
    Ok(())
}

fn allowed(
    x: &str,
    include: Option<&[String]>,
    exclude: &[String],
    eq: impl Fn(&str, &str) -> bool,
) -> bool {
    // Spec: an exclusion wins over an inclusion.
    if exclude.iter().any(|p| eq(p, x)) {
        return false;
    }
    include.is_none_or(|inc| inc.iter().any(|p| eq(p, x)))
}

impl EventFilter {
    fn validate(&self, what: &str) -> Result<(), FilterError> {
        let lists = [
            self.types.as_deref().unwrap_or_default(),
            &self.not_types,
            self.senders.as_deref().unwrap_or_default(),
            &self.not_senders,
        ];
        if lists.iter().any(|l| l.len() > MAX_LIST) {
            return Err(FilterError::BadJson(format!(
                "{what}: filter lists hold at most {MAX_LIST} entries"
            )));
        }
        check_prefix(
            self.senders.iter().flatten().chain(&self.not_senders),
            '@',
            what,
        )
    }

    /// Whether `event_type` passes `types`/`not_types` (where events are
    /// filtered in memory, e.g. `/context` state).
    pub fn type_matches(&self, event_type: &str) -> bool {
        allowed(
            event_type,
            self.types.as_deref(),
            &self.not_types,
            glob_match,
        )
    }

    /// Whether an event of `event_type` from `sender` passes.
    pub fn allows(&self, event_type: &str, sender: Option<&str>) -> bool {
        if !allowed(
            event_type,
            self.types.as_deref(),
            &self.not_types,
            glob_match,
        ) {
            return false;
        }
        match sender {
            Some(s) => allowed(s, self.senders.as_deref(), &self.not_senders, |a, b| a == b),
            None => true,
        }
    }

    /// Whether a client-format event passes (type and sender).
    pub fn allows_event(&self, ev: &Value) -> bool {
        let t = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        self.allows(t, ev.get("sender").and_then(Value::as_str))
    }
}

impl RoomEventFilter {
    /// Parses the `filter` query parameter of `/messages` and `/context`
    /// (JSON text; spec `RoomEventFilter`).
    pub fn parse(json: &str) -> Result<RoomEventFilter, FilterError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| FilterError::NotJson(e.to_string()))?;
        if !value.is_object() {
            return Err(FilterError::BadJson("filter must be an object".into()));
        }
        let f: RoomEventFilter = serde_path_to_error::deserialize(&value)
            .map_err(|e| FilterError::BadJson(e.to_string()))?;
        f.base.validate("filter")?;
        check_prefix(f.rooms.iter().flatten().chain(&f.not_rooms), '!', "filter")?;
        Ok(f)
    }

    /// Whether a client-format event of `room_id` passes.
    pub fn allows_event(&self, room_id: &str, ev: &Value) -> bool {
        if !allowed(room_id, self.rooms.as_deref(), &self.not_rooms, |a, b| {
            a == b
        }) {
            return false;
        }
        if let Some(want) = self.contains_url {
            let has = ev
                .get("content")
                .and_then(|c| c.get("url"))
                .is_some_and(Value::is_string);
            if has != want {
                return false;
            }
        }
        self.base.allows_event(ev)
    }
}

/// Splits an `event_fields` entry on unescaped dots (`\.` is a literal dot,
/// `\\` a backslash).
fn field_path(f: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(n);
                }
            }
            '.' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn project_fields(ev: &Value, fields: &[String]) -> Value {
    let mut out = Map::new();
    for f in fields {
        let path = field_path(f);
        let mut src = ev;
        let mut ok = true;
        for k in &path {
            match src.get(k) {
                Some(v) => src = v,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let mut dst = &mut out;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                dst.insert(k.clone(), src.clone());
                break;
            }
            let next = dst
                .entry(k.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(m) => dst = m,
                // A shorter path already copied the whole parent.
                _ => break,
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("m.*", "m.room.message"));
        assert!(glob_match("*", ""));
        assert!(glob_match("m.room.*.x", "m.room.a.b.x"));
        assert!(!glob_match("m.room.*.x", "m.room.a.b.y"));
        assert!(glob_match("m.room.message", "m.room.message"));
        assert!(!glob_match("m.room.message", "m.room.messages"));
        assert!(!glob_match("a*a", "a"));
        assert!(glob_match("a*a", "aa"));
    }

    #[test]
    fn parse_and_defaults() {
        let f = Filter::from_value(&json!({})).unwrap();
        assert_eq!(f.timeline_limit(), DEFAULT_TIMELINE_LIMIT);
        assert!(!f.room.include_leave);
        let f = Filter::from_value(&json!({
            "room": {"timeline": {"limit": 5000, "types": ["m.room.*"]},
                     "state": {"lazy_load_members": true}, "include_leave": true},
            "unknown_key": 1
        }))
        .unwrap();
        assert_eq!(f.timeline_limit(), MAX_LIMIT);
        assert!(f.lazy_load_members());
        assert!(f.room.include_leave);
    }

    #[test]
    fn bad_shapes_are_bad_json() {
        for bad in [
            json!([]),
            json!({"room": {"timeline": {"limit": "ten"}}}),
            json!({"room": {"timeline": {"limit": -1}}}),
            json!({"room": {"rooms": "!a:b"}}),
            json!({"room": {"rooms": ["a:b"]}}),
            json!({"presence": {"senders": ["bob"]}}),
            json!({"room": {"include_leave": "yes"}}),
            json!({"event_format": "xml"}),
        ] {
            let e = Filter::from_value(&bad).unwrap_err();
            assert!(matches!(e, FilterError::BadJson(_)), "{bad}");
        }
        assert!(matches!(
            Filter::from_slice(b"{nope"),
            Err(FilterError::NotJson(_))
        ));
    }

    #[test]
    fn matching_rules() {
        let f = Filter::from_value(&json!({"room": {
            "not_rooms": ["!b:h"],
            "timeline": {"types": ["m.room.*"], "not_types": ["m.room.member"],
                         "not_senders": ["@spam:h"], "contains_url": false}
        }}))
        .unwrap();
        assert!(f.allows_room("!a:h"));
        assert!(!f.allows_room("!b:h"));
        let t = &f.room.timeline;
        let ev = |ty: &str, s: &str| json!({"type": ty, "sender": s, "content": {}});
        assert!(t.allows_event("!a:h", &ev("m.room.message", "@a:h")));
        assert!(!t.allows_event("!a:h", &ev("m.room.member", "@a:h")));
        assert!(!t.allows_event("!a:h", &ev("org.x", "@a:h")));
        assert!(!t.allows_event("!a:h", &ev("m.room.message", "@spam:h")));
        let with_url = json!({"type": "m.room.message", "sender": "@a:h",
                              "content": {"url": "mxc://x/y"}});
        assert!(!t.allows_event("!a:h", &with_url));
    }

    #[test]
    fn event_fields_projection() {
        let f = Filter::from_value(&json!({"event_fields": ["type", "content.body", "a\\.b"]}))
            .unwrap();
        let ev = json!({"type": "t", "sender": "@s:h", "content": {"body": "x", "other": 1},
                        "a.b": 2});
        assert_eq!(
            f.project(ev),
            json!({"type": "t", "content": {"body": "x"}, "a.b": 2})
        );
    }

    #[test]
    fn parses_the_room_event_filter_of_messages() {
        let f = RoomEventFilter::parse(
            r#"{"limit":5,"types":["m.room.*"],"not_types":["m.room.member"],
                "senders":["@a:h"],"not_senders":["@b:h"],"contains_url":true,
                "lazy_load_members":true,"rooms":["!x:h"],"unknown":1}"#,
        )
        .unwrap();
        assert_eq!(f.base.limit, Some(5));
        assert_eq!(f.base.types, Some(vec!["m.room.*".to_owned()]));
        assert_eq!(f.base.not_senders, vec!["@b:h".to_owned()]);
        assert_eq!(f.contains_url, Some(true));
        assert!(f.lazy_load_members);
        assert!(RoomEventFilter::parse("{}").is_ok());
        assert!(f.base.type_matches("m.room.message"));
        assert!(!f.base.type_matches("m.room.member"));
        assert!(!f.base.type_matches("org.x"));
    }

    #[test]
    fn bad_room_event_filters_are_typed_errors() {
        assert!(matches!(
            RoomEventFilter::parse("{nope"),
            Err(FilterError::NotJson(_))
        ));
        let long = format!(r#"{{"types":[{}]}}"#, vec!["\"a\""; 1001].join(","));
        for bad in [
            "[]",
            "3",
            r#"{"types":"m.room.message"}"#,
            r#"{"limit":-1}"#,
            long.as_str(),
        ] {
            assert!(
                matches!(RoomEventFilter::parse(bad), Err(FilterError::BadJson(_))),
                "{bad}"
            );
        }
    }
}

//! The `RoomEventFilter` of `/messages` and `/context` (`filter` query
//! parameter, spec "Filtering", filter.yaml `RoomEventFilter`). Type,
//! sender and URL conditions are applied in SQL (`timeline::page`), so a
//! page is `limit` *matching* events and pagination stays gap-free.

use serde::Deserialize;

/// Most entries a filter list may have: bounds the SQL arrays.
const MAX_LIST: usize = 1000;

/// Why a `filter` parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not JSON at all (400 `M_NOT_JSON`).
    #[error("filter is not JSON: {0}")]
    NotJson(String),
    /// JSON of the wrong shape (400 `M_BAD_JSON`).
    #[error("invalid filter: {0}")]
    BadJson(String),
}

/// The parts of a `RoomEventFilter` hearth applies to room history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    /// Maximum events to return (caps the `limit` query parameter).
    pub limit: Option<u64>,
    /// Event types to include (`*` wildcards); absent = all, `[]` = none.
    pub types: Option<Vec<String>>,
    /// Event types to exclude; wins over `types`.
    pub not_types: Vec<String>,
    /// Senders to include; absent = all.
    pub senders: Option<Vec<String>>,
    /// Senders to exclude; wins over `senders`.
    pub not_senders: Vec<String>,
    /// `true`: only events whose `content.url` is a string; `false`: only
    /// events without one.
    pub contains_url: Option<bool>,
    /// Spec "Lazy-loading room members": send the member events of the
    /// chunk's senders in `state`.
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
}

impl EventFilter {
    /// Parses the `filter` query parameter (JSON text).
    pub fn parse(json: &str) -> Result<EventFilter, FilterError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| FilterError::NotJson(e.to_string()))?;
        if !value.is_object() {
            return Err(FilterError::BadJson("filter must be an object".into()));
        }
        let f: EventFilter =
            serde_json::from_value(value).map_err(|e| FilterError::BadJson(e.to_string()))?;
        let lists = [
            f.types.as_deref().unwrap_or_default(),
            &f.not_types,
            f.senders.as_deref().unwrap_or_default(),
            &f.not_senders,
        ];
        if lists.iter().any(|l| l.len() > MAX_LIST) {
            return Err(FilterError::BadJson(format!(
                "filter lists hold at most {MAX_LIST} entries"
            )));
        }
        Ok(f)
    }

    /// Whether `event_type` passes `types`/`not_types` (used where events
    /// are filtered in memory, e.g. `/context` state).
    pub fn type_matches(&self, event_type: &str) -> bool {
        let hit = |pats: &[String]| pats.iter().any(|p| glob_match(p, event_type));
        !hit(&self.not_types) && self.types.as_deref().is_none_or(hit)
    }
}

/// `*` matches any sequence of characters.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_room_event_filter_fields() {
        let f = EventFilter::parse(
            r#"{"limit":5,"types":["m.room.*"],"not_types":["m.room.member"],
                "senders":["@a:h"],"not_senders":["@b:h"],"contains_url":true,
                "lazy_load_members":true,"rooms":["!x:h"],"unknown":1}"#,
        )
        .unwrap();
        assert_eq!(f.limit, Some(5));
        assert_eq!(f.types, Some(vec!["m.room.*".to_owned()]));
        assert_eq!(f.not_senders, vec!["@b:h".to_owned()]);
        assert_eq!(f.contains_url, Some(true));
        assert!(f.lazy_load_members);
        assert_eq!(EventFilter::parse("{}").unwrap(), EventFilter::default());
    }

    #[test]
    fn bad_filters_are_typed_errors() {
        assert!(matches!(
            EventFilter::parse("{nope"),
            Err(FilterError::NotJson(_))
        ));
        for bad in [
            "[]",
            "3",
            r#"{"types":"m.room.message"}"#,
            r#"{"limit":-1}"#,
        ] {
            assert!(
                matches!(EventFilter::parse(bad), Err(FilterError::BadJson(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn wildcards() {
        assert!(glob_match("m.room.*", "m.room.message"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("m.*.message", "m.room.message"));
        assert!(!glob_match("m.*.message", "m.room.messages"));
        assert!(!glob_match("m.room.member", "m.room.message"));
        assert!(!glob_match("ab*ba", "aba"));
        let f = EventFilter::parse(r#"{"types":["m.*"],"not_types":["m.room.member"]}"#).unwrap();
        assert!(f.type_matches("m.room.message"));
        assert!(!f.type_matches("m.room.member"));
        assert!(!f.type_matches("org.x"));
    }
}

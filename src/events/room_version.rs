//! The room versions hearth speaks (10, 11, 12) and the per-version facts the
//! event code needs.
//!
//! The detailed rules (redaction, auth, state resolution) come from ruma's
//! [`RoomVersionRules`]; this type is the small closed set hearth accepts, so
//! that everything else can `match` on it exhaustively.

use std::fmt;
use std::str::FromStr;

use ruma::room_version_rules::{RedactionRules, RoomVersionRules};
use ruma::RoomVersionId;

/// A room version hearth supports.
///
/// Spec: rooms/_index.md "Complete list of room versions"; v10.md, v11.md, v12.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoomVersion {
    V10,
    V11,
    V12,
}

/// A room version string hearth does not support (or that is not a room
/// version at all). The client API maps it to `400 M_UNSUPPORTED_ROOM_VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported room version {0:?}")]
pub struct UnsupportedRoomVersion(pub String);

// Statics so `rules()` can hand out `&'static` references.
static RULES_V10: RoomVersionRules = RoomVersionRules::V10;
static RULES_V11: RoomVersionRules = RoomVersionRules::V11;
static RULES_V12: RoomVersionRules = RoomVersionRules::V12;

impl RoomVersion {
    /// The version new rooms get. Spec rooms/_index.md: "Servers SHOULD use
    /// room version 12 as the default room version when creating new rooms"
    /// (also Synapse 1.163's default).
    pub const DEFAULT: RoomVersion = RoomVersion::V12;

    /// All supported versions, oldest first (for `m.room_versions` capability).
    pub const SUPPORTED: [RoomVersion; 3] = [RoomVersion::V10, RoomVersion::V11, RoomVersion::V12];

    /// Parses a room version string such as `"11"`.
    pub fn parse(s: &str) -> Result<Self, UnsupportedRoomVersion> {
        match s {
            "10" => Ok(Self::V10),
            "11" => Ok(Self::V11),
            "12" => Ok(Self::V12),
            other => Err(UnsupportedRoomVersion(other.to_owned())),
        }
    }

    /// The wire form (`"10"`, `"11"`, `"12"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V10 => "10",
            Self::V11 => "11",
            Self::V12 => "12",
        }
    }

    /// ruma's identifier for this version.
    pub fn id(self) -> RoomVersionId {
        match self {
            Self::V10 => RoomVersionId::V10,
            Self::V11 => RoomVersionId::V11,
            Self::V12 => RoomVersionId::V12,
        }
    }

    /// ruma's full rule set for this version (auth, redaction, state res...).
    pub fn rules(self) -> &'static RoomVersionRules {
        match self {
            Self::V10 => &RULES_V10,
            Self::V11 => &RULES_V11,
            Self::V12 => &RULES_V12,
        }
    }

    /// The redaction algorithm's rules (v10: v9 rules; v11+: v11 rules).
    pub fn redaction_rules(self) -> &'static RedactionRules {
        &self.rules().redaction
    }

    /// v12: the room id is `!` + the create event's reference hash, and the
    /// create event itself carries no `room_id` (v12 auth rules 1.2, 2).
    pub fn room_id_from_create_event(self) -> bool {
        self.rules().authorization.room_create_event_id_as_room_id
    }

    /// v10 requires `creator` in `m.room.create` content (v10 auth rule 1.4);
    /// v11 removed it ("Remove the `creator` property of `m.room.create` events").
    pub fn create_content_has_creator(self) -> bool {
        !self.rules().authorization.use_room_create_sender
    }

    /// v11 moved `redacts` of `m.room.redaction` from the top level into
    /// `content` (v11.md "Moving the `redacts` property").
    pub fn redacts_in_content(self) -> bool {
        self.rules().redaction.content_field_redacts
    }

    /// v12: `content.additional_creators` of the create event names further
    /// room creators (v12 auth rule 1.4).
    pub fn supports_additional_creators(self) -> bool {
        self.rules().authorization.additional_room_creators
    }

    /// v12: creators have infinite power and must not appear in the
    /// `users` map of `m.room.power_levels` (v12 auth rule 10.4).
    pub fn creators_have_infinite_power(self) -> bool {
        self.rules()
            .authorization
            .explicitly_privilege_room_creators
    }

    /// Whether the create event may (and must) be listed in `auth_events`.
    /// v12: "The `m.room.create` event MUST NOT be selected for `auth_events`".
    pub fn create_event_in_auth_events(self) -> bool {
        self.rules().event_format.allow_room_create_in_auth_events
    }
}

impl Default for RoomVersion {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for RoomVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoomVersion {
    type Err = UnsupportedRoomVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&RoomVersionId> for RoomVersion {
    type Error = UnsupportedRoomVersion;

    fn try_from(id: &RoomVersionId) -> Result<Self, Self::Error> {
        Self::parse(id.as_str())
    }
}

impl serde::Serialize for RoomVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for RoomVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others() {
        for v in RoomVersion::SUPPORTED {
            assert_eq!(RoomVersion::parse(v.as_str()), Ok(v));
            assert_eq!(v.to_string().parse::<RoomVersion>(), Ok(v));
            assert_eq!(RoomVersion::try_from(&v.id()), Ok(v));
        }
        for bad in ["1", "9", "13", "", "org.matrix.msc3757.11", "12 "] {
            assert_eq!(
                RoomVersion::parse(bad),
                Err(UnsupportedRoomVersion(bad.to_owned()))
            );
        }
    }

    #[test]
    fn default_is_12() {
        assert_eq!(RoomVersion::default(), RoomVersion::V12);
    }

    #[test]
    fn per_version_facts() {
        use RoomVersion::*;
        assert!(!V10.room_id_from_create_event());
        assert!(!V11.room_id_from_create_event());
        assert!(V12.room_id_from_create_event());

        assert!(V10.create_content_has_creator());
        assert!(!V11.create_content_has_creator());
        assert!(!V12.create_content_has_creator());

        assert!(!V10.redacts_in_content());
        assert!(V11.redacts_in_content());
        assert!(V12.redacts_in_content());

        assert!(!V11.supports_additional_creators());
        assert!(V12.supports_additional_creators());
        assert!(V12.creators_have_infinite_power());
        assert!(!V11.creators_have_infinite_power());

        assert!(V10.create_event_in_auth_events());
        assert!(V11.create_event_in_auth_events());
        assert!(!V12.create_event_in_auth_events());

        assert!(V10.redaction_rules().keep_origin_membership_prev_state);
        assert!(!V11.redaction_rules().keep_origin_membership_prev_state);
    }

    #[test]
    fn serde_as_string() {
        let v: RoomVersion = serde_json::from_str("\"11\"").unwrap();
        assert_eq!(v, RoomVersion::V11);
        assert_eq!(serde_json::to_string(&RoomVersion::V12).unwrap(), "\"12\"");
        assert!(serde_json::from_str::<RoomVersion>("\"5\"").is_err());
        assert!(serde_json::from_str::<RoomVersion>("12").is_err());
    }
}

//! A user's profile (display name, avatar) in their `m.room.member`
//! events, as Synapse keeps it: join, invite and knock events carry the
//! target's profile, and a profile change re-sends the user's join event
//! in every room they are joined to (client-server API "Profiles":
//! "Events on change of profile information").

use futures_util::future::join_all;
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

use crate::db::Pool;
use crate::mesh::MeshEndpoint;

use super::create::PlannedEvent;
use super::service::{EventRequest, RoomHead, Rooms};
use super::RoomError;

/// The two profile fields member events carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberProfile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

impl MemberProfile {
    /// Sets both keys in a member event content; an unset field removes
    /// its key (rather than writing `null`).
    pub fn apply(&self, content: &mut CanonicalJsonObject) {
        for (key, value) in [
            ("displayname", &self.displayname),
            ("avatar_url", &self.avatar_url),
        ] {
            match value {
                Some(v) => {
                    content.insert(key.into(), CanonicalJsonValue::String(v.clone()));
                }
                None => {
                    content.remove(key);
                }
            }
        }
    }
}

/// The profile of a local user (`None`: no such local user, e.g. remote).
pub async fn load(db: &Pool, user: &str) -> Result<Option<MemberProfile>, RoomError> {
    let row = db
        .query_opt(
            "SELECT displayname, avatar_url FROM users WHERE user_id = $1",
            &[&user],
        )
        .await?;
    row.map(|r| {
        Ok(MemberProfile {
            displayname: r.get(0)?,
            avatar_url: r.get(1)?,
        })
    })
    .transpose()
}

/// Whether a membership's event carries the target's profile (Synapse:
/// all but leave and ban).
pub fn carries_profile(membership: &str) -> bool {
    matches!(membership, "join" | "invite" | "knock")
}

/// Adds the target's profile to a member event content about to be sent.
pub async fn fill(
    db: &Pool,
    target: &str,
    content: &mut CanonicalJsonObject,
) -> Result<(), RoomError> {
    let membership = match content.get("membership") {
        Some(CanonicalJsonValue::String(m)) => m.clone(),
        _ => return Ok(()),
    };
    if carries_profile(&membership) {
        if let Some(p) = load(db, target).await? {
            p.apply(content);
        }
    }
    Ok(())
}

/// Fills the profiles into `createRoom`'s planned member events (the
/// creator's join, the invites).
pub async fn fill_create_plan(db: &Pool, events: &mut [PlannedEvent]) -> Result<(), RoomError> {
    for (ty, key, content) in events.iter_mut() {
        if ty == "m.room.member" {
            fill(db, key, content).await?;
        }
    }
    Ok(())
}

/// The content of a current state event, from the owner's head.
pub async fn state_content(
    rooms: &Rooms,
    head: &RoomHead,
    event_type: &str,
    state_key: &str,
) -> Result<Option<CanonicalJsonObject>, RoomError> {
    let Some(id) = head
        .state
        .get(&(event_type.to_owned(), state_key.to_owned()))
    else {
        return Ok(None);
    };
    let id = OwnedEventId::try_from(id.as_str()).map_err(|e| RoomError::Internal(e.to_string()))?;
    let Some(pdu) = rooms.event(&id).await? else {
        return Ok(None);
    };
    match pdu.json.get("content") {
        Some(CanonicalJsonValue::Object(c)) => Ok(Some(c.clone())),
        _ => Ok(None),
    }
}

/// On the owner shard: re-sends `user`'s join event with `profile`, keeping
/// the rest of its content. Nothing is sent if the user is not joined
/// (any more) or the event already says the same.
async fn refresh(
    rooms: &std::rc::Rc<Rooms>,
    room_id: OwnedRoomId,
    user: OwnedUserId,
    profile: MemberProfile,
) -> Result<Option<OwnedEventId>, RoomError> {
    let rid = room_id.clone();
    let sent = rooms
        .send_built(&rid, |head| async move {
            let Some(mut content) =
                state_content(rooms, &head, "m.room.member", user.as_str()).await?
            else {
                return Ok(None);
            };
            if content.get("membership") != Some(&CanonicalJsonValue::String("join".into())) {
                return Ok(None);
            }
            let before = content.clone();
            profile.apply(&mut content);
            if content == before {
                return Ok(None);
            }
            Ok(Some(EventRequest {
                room_id: room_id.clone(),
                sender: user.clone(),
                event_type: "m.room.member".into(),
                state_key: Some(user.to_string()),
                content,
                txn: None,
                redacts: None,
            }))
        })
        .await?;
    Ok(sent.map(|p| p.event_id.clone()))
}

/// What [`propagate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropagateReport {
    pub updated: usize,
    pub unchanged: usize,
    pub failed: usize,
}

/// After a profile change: the user's new profile into their join event in
/// every joined room, each on its room's owner shard, concurrently. A room
/// that refuses (or fails) is logged and skipped: the profile change
/// itself already happened and is not undone.
pub async fn propagate(
    mesh: &MeshEndpoint,
    db: &Pool,
    user: &OwnedUserId,
) -> Result<PropagateReport, RoomError> {
    let Some(profile) = load(db, user.as_str()).await? else {
        return Ok(PropagateReport::default());
    };
    let rooms = super::client::joined_rooms(db, user.as_str()).await?;
    let jobs = rooms.into_iter().filter_map(|room| {
        let room_id = OwnedRoomId::try_from(room.as_str()).ok()?;
        let (user, profile) = (user.clone(), profile.clone());
        Some(async move {
            let r = super::client::on_owner(mesh, &room_id.clone(), move |rooms| async move {
                refresh(&rooms, room_id, user, profile).await
            })
            .await;
            (room, r)
        })
    });
    let mut report = PropagateReport::default();
    for (room, r) in join_all(jobs).await {
        match r {
            Ok(Some(_)) => report.updated += 1,
            Ok(None) => report.unchanged += 1,
            Err(e) => {
                report.failed += 1;
                tracing::warn!(room = %room, user = %user, error = %e,
                    "could not update the member event after a profile change");
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: serde_json::Value) -> CanonicalJsonObject {
        ruma::canonical_json::try_from_json_map(v.as_object().cloned().unwrap()).unwrap()
    }

    #[test]
    fn apply_sets_and_removes_keeping_the_rest() {
        let mut c = obj(serde_json::json!({
            "membership": "join", "displayname": "old", "avatar_url": "mxc://a/b",
            "reason": "kept"
        }));
        MemberProfile {
            displayname: Some("new".into()),
            avatar_url: None,
        }
        .apply(&mut c);
        assert_eq!(
            c,
            obj(serde_json::json!({"membership": "join", "displayname": "new", "reason": "kept"}))
        );
    }

    #[test]
    fn which_memberships_carry_profiles() {
        assert!(carries_profile("join") && carries_profile("invite") && carries_profile("knock"));
        assert!(!carries_profile("leave") && !carries_profile("ban"));
    }
}

//! Which other servers get a room's events (server-server "Transactions":
//! a server sends its events to every server with a member in the room),
//! and the durable outbox rows that say so.
//!
//! The rows (`federation_outbox`, one per destination and event) are
//! written in the same transaction as the events (`rooms::pipeline`), so an
//! event acknowledged to a client is never lost to the other servers; the
//! outbound sender (`federation::sender`) delivers and deletes them.
//!
//! The servers joined to a room are cached per room and forgotten when a
//! membership event of the room commits (writes to a room are serial, so
//! the next chain reads them afresh). Within one chain, a join adds its
//! server for the events after it; a member event is also sent to the
//! server of its target (an invite, kick or ban reaches the user's server).

use std::collections::BTreeSet;
use std::rc::Rc;

use ruma::{OwnedRoomId, OwnedUserId};

use crate::db::{SqlValue, Write};
use crate::events::Pdu;

use super::service::Rooms;
use super::RoomError;

impl Rooms {
    /// The servers other than ours with a joined member in the room now.
    pub async fn remote_servers(&self, room: &OwnedRoomId) -> Result<Rc<Vec<String>>, RoomError> {
        if let Some(s) = self.servers.borrow_mut().get(room) {
            return Ok(s.clone());
        }
        let ours = self.key.server_name.as_str();
        let mut servers = super::directory::joined_servers(&self.db, room, ours).await?;
        // A partial-state room's members are mostly unknown: the servers
        // the resident server named (`servers_in_room`) get our events too
        // (MSC3902; Synapse sends to them until the resync completes).
        if let Some(named) = super::partial::servers(room) {
            servers.extend(named);
            servers.sort();
            servers.dedup();
        }
        servers.retain(|s| s != ours);
        let servers = Rc::new(servers);
        self.servers.borrow_mut().put(room.clone(), servers.clone());
        Ok(servers)
    }

    /// After a membership event of `room` commits.
    pub(super) fn forget_servers(&self, room: &OwnedRoomId) {
        self.servers.borrow_mut().pop(room);
    }

    /// The outbox rows for the timeline events of one chain of `room`
    /// (`events`, in order): appended to `w`; returns every destination.
    pub(super) async fn outbox(
        &self,
        room: &OwnedRoomId,
        events: &[&Pdu],
        w: Write,
    ) -> Result<(Write, Vec<String>), RoomError> {
        let ours = self.key.server_name.as_str();
        let local = |p: &Pdu| p.sender.server_name().as_str() == ours;
        let member_target = |p: &Pdu| {
            (p.kind.to_string() == "m.room.member")
                .then(|| {
                    p.state_key
                        .as_deref()
                        .and_then(|k| OwnedUserId::try_from(k).ok())
                })
                .flatten()
                .map(|u| u.server_name().to_string())
                .filter(|s| s != ours)
        };
        if !events
            .iter()
            .any(|p| local(p) || member_target(p).is_some())
        {
            return Ok((w, Vec::new()));
        }
        let mut servers: BTreeSet<String> =
            self.remote_servers(room).await?.iter().cloned().collect();
        let (mut dests, mut ids) = (Vec::new(), Vec::new());
        let mut all = BTreeSet::new();
        for p in events {
            let target = member_target(p);
            if local(p) {
                for d in servers.iter().chain(target.iter()) {
                    all.insert(d.clone());
                    dests.push(d.clone());
                    ids.push(p.event_id.to_string());
                }
            }
            if let (Some(t), Some("join")) = (target, p.membership().as_deref()) {
                servers.insert(t);
            }
        }
        if dests.is_empty() {
            return Ok((w, Vec::new()));
        }
        let w = w.statement(
            "INSERT INTO federation_outbox (destination, room_id, event_id, queued_ts) \
             SELECT d, $1, e, $4 FROM unnest($2::text[], $3::text[]) AS t(d, e)",
            vec![
                SqlValue::from(room.as_str()),
                SqlValue::TextArray(dests),
                SqlValue::TextArray(ids),
                crate::primitives::unix_ms_i64().into(),
            ],
        );
        Ok((w, all.into_iter().collect()))
    }
}

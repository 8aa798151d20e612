//! The per-shard room service: caches, per-room serialisation, building,
//! authorising and persisting events. Only the room's owner shard writes
//! to it; the service lives in a thread-local so mesh jobs reach it.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;

use lru::LruCache;
use ruma::canonical_json::{self, CanonicalJsonObject};
use ruma::state_res;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

use crate::db::{GroupCommit, Pool};
use crate::events::{build_pdu, NewEvent, PduError, RoomVersion, ServerKey};
use crate::primitives::Linearizer;
use crate::stream::StreamWriter;

use super::commit::Placement;
use super::graph::{Extremity, Resolver};
use super::state::{self, SnapshotHead, StateMap};
use super::RoomError;
use crate::events::Pdu;

const HEAD_CACHE: usize = 10_000;
/// States (by snapshot id) and resolutions (by their inputs' ids).
const STATE_CACHE: usize = 1_000;

/// A room as its owner shard needs it to append an event.
#[derive(Debug, Clone)]
pub struct RoomHead {
    pub version: RoomVersion,
    /// Current state (shared: a send's "state before" is this map).
    pub state: Rc<StateMap>,
    /// Snapshot of the current state (`None` before the create event).
    pub snapshot: Option<SnapshotHead>,
    /// Forward extremities: events no other event references yet (a
    /// set; never a soft-failed event). Current state is the resolution of
    /// their states.
    pub extremities: Vec<Extremity>,
}

/// A client's request to add an event to a room (`Send`, crosses shards).
#[derive(Debug, Clone)]
pub struct EventRequest {
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: CanonicalJsonObject,
    /// `(device_id, txn_id)` for idempotent `PUT /send`.
    pub txn: Option<(String, String)>,
    /// For `m.room.redaction`: the event redacted (placed top-level or in
    /// `content` by the room version; see `rooms::redaction`).
    pub redacts: Option<OwnedEventId>,
}

/// One shard's room service.
pub struct Rooms {
    pub shard: usize,
    pub n_shards: usize,
    pub db: Pool,
    pub(super) writer: GroupCommit,
    pub key: Arc<ServerKey>,
    pub(super) stream: Rc<StreamWriter>,
    pub(super) room_locks: Linearizer<OwnedRoomId>,
    pub(super) heads: RefCell<LruCache<OwnedRoomId, Rc<RoomHead>>>,
    pub(super) events: super::event_cache::EventCache,
    /// `[snapshot]` → its state; sorted snapshot ids → their resolution.
    pub(super) states: RefCell<LruCache<Vec<i64>, Rc<StateMap>>>,
    /// Public keys of other servers (`rooms::remote_keys`).
    pub remote_keys: super::remote_keys::RemoteKeys,
    /// Rooms with writes queued or in flight (`rooms::pipeline`).
    pub(super) pipelines: super::pipeline::Pipelines,
    /// Devices' txn ids, so a new one needs no query (`rooms::txn`).
    pub(super) txn_memory: super::txn::TxnMemory,
    /// Other servers joined to each room (`rooms::destinations`).
    pub(super) servers: RefCell<LruCache<OwnedRoomId, Rc<Vec<String>>>>,
    /// Lowest stream position given to a backfilled event (`None`: not
    /// read yet; `rooms::backfill`).
    pub(super) backfill_floor: std::cell::Cell<Option<i64>>,
    /// Big state resolutions take turns per room (`admission`; open until
    /// [`Rooms::with_resolution_gate`]).
    pub(super) resolutions: crate::primitives::FairGate,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Rooms>>> = const { RefCell::new(None) };
}

/// Makes `rooms` this shard's service (at shard start).
pub fn install(rooms: Rc<Rooms>) {
    LOCAL.with(|l| *l.borrow_mut() = Some(rooms));
}

/// This shard's service, for handlers and mesh jobs.
pub fn local() -> Result<Rc<Rooms>, RoomError> {
    LOCAL
        .with(|l| l.borrow().clone())
        .ok_or_else(|| RoomError::Internal("room service not started on this shard".into()))
}

fn pdu_error(e: PduError) -> RoomError {
    match e {
        PduError::TooLarge { .. } => RoomError::TooLarge(e.to_string()),
        PduError::Invalid(m) => RoomError::BadJson(m),
        other => RoomError::Internal(other.to_string()),
    }
}

impl Rooms {
    /// Opens the service on this shard's stream writer (whose positions
    /// resume after everything persisted before: they survive restarts).
    pub async fn open(
        shard: usize,
        n_shards: usize,
        db: Pool,
        writer: GroupCommit,
        key: Arc<ServerKey>,
        stream: Rc<StreamWriter>,
    ) -> Result<Rooms, RoomError> {
        let cap = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ok(Rooms {
            shard,
            n_shards,
            db,
            writer,
            key,
            stream,
            room_locks: Linearizer::new("room-writes", 1),
            heads: RefCell::new(LruCache::new(cap(HEAD_CACHE))),
            events: Default::default(),
            states: RefCell::new(LruCache::new(cap(STATE_CACHE))),
            remote_keys: super::remote_keys::RemoteKeys::default(),
            pipelines: Default::default(),
            txn_memory: Default::default(),
            servers: RefCell::new(LruCache::new(cap(HEAD_CACHE))),
            backfill_floor: std::cell::Cell::new(None),
            resolutions: crate::primitives::FairGate::open("state_resolution"),
        })
    }

    /// Caps the big state resolutions run at once on this shard (the
    /// shard's `admission` gate).
    pub fn with_resolution_gate(mut self, gate: crate::primitives::FairGate) -> Rooms {
        self.resolutions = gate;
        self
    }

    /// This shard's stream writer.
    pub fn stream(&self) -> Rc<StreamWriter> {
        self.stream.clone()
    }

    /// The owner shard of a room.
    pub fn owner(&self, room_id: &OwnedRoomId) -> usize {
        crate::mesh::shard_for_room(room_id, self.n_shards)
    }

    /// Resolves and loads states through this shard's state cache.
    pub(super) fn resolver(&self) -> Resolver<'_> {
        Resolver {
            db: &self.db,
            cache: &self.states,
            gate: &self.resolutions,
        }
    }

    pub(super) fn check_owner(&self, room_id: &OwnedRoomId) -> Result<(), RoomError> {
        if self.owner(room_id) != self.shard {
            return Err(RoomError::Internal(format!(
                "room {room_id} written on shard {} but owned by {}",
                self.shard,
                self.owner(room_id)
            )));
        }
        Ok(())
    }

    /// The room's head, from cache or the database (`NotFound` if unknown).
    pub async fn head(&self, room_id: &OwnedRoomId) -> Result<Rc<RoomHead>, RoomError> {
        if let Some(h) = self.heads.borrow_mut().get(room_id) {
            return Ok(h.clone());
        }
        let row = self
            .db
            .query_opt(
                "SELECT room_version, current_snapshot FROM rooms WHERE room_id = $1",
                &[&room_id.as_str()],
            )
            .await?
            .ok_or_else(|| RoomError::NotFound(format!("unknown room {room_id}")))?;
        let version = RoomVersion::parse(row.get::<&str>(0)?)?;
        let snap: i64 = row.get(1)?;
        let snapshot = state::head(&self.db, snap).await?;
        let state = Rc::new(state::load(&self.db, snap).await?);
        let rows = self
            .db
            .query(
                "SELECT e.event_id, e.depth, e.snapshot_id FROM room_extremities x \
                 CROSS JOIN unnest(x.event_ids) AS f(event_id) \
                 JOIN events e ON e.event_id = f.event_id WHERE x.room_id = $1",
                &[&room_id.as_str()],
            )
            .await?;
        let mut extremities = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.get(0)?;
            extremities.push(Extremity {
                event_id: OwnedEventId::try_from(id)
                    .map_err(|e| RoomError::Internal(e.to_string()))?,
                depth: r.get(1)?,
                snapshot: r.get::<Option<i64>>(2)?.unwrap_or(snap),
            });
        }
        let head = Rc::new(RoomHead {
            version,
            state,
            snapshot,
            extremities,
        });
        self.heads.borrow_mut().put(room_id.clone(), head.clone());
        Ok(head)
    }

    /// An event of the graph by id (timeline, soft-failed or outlier: for
    /// auth and state, never to serve), from cache or the database.
    pub async fn event(&self, event_id: &OwnedEventId) -> Result<Option<Rc<Pdu>>, RoomError> {
        if let Some(p) = self.events.get(event_id) {
            return Ok(Some(p));
        }
        let row = self
            .db
            .query_opt(
                "SELECT e.json, r.room_version FROM room_pdus e JOIN rooms r USING (room_id) \
                 WHERE e.event_id = $1",
                &[&event_id.as_str()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let json: serde_json::Value = row.get(0)?;
        let version = RoomVersion::parse(row.get::<&str>(1)?)?;
        let serde_json::Value::Object(map) = json else {
            return Err(RoomError::Internal("stored event is not an object".into()));
        };
        let json = canonical_json::try_from_json_map(map)
            .map_err(|e| RoomError::Internal(e.to_string()))?;
        let pdu = Rc::new(Pdu::from_json(event_id.clone(), json, version)?);
        self.events.put(pdu.clone());
        Ok(Some(pdu))
    }

    /// The head a new event of the room builds on: its pipeline's tail
    /// when writes are outstanding, else the committed head; with the
    /// pipeline's failure count (see `rooms::pipeline`). Under the lock.
    pub(super) async fn write_head(
        &self,
        room_id: &OwnedRoomId,
    ) -> Result<(Rc<RoomHead>, u64), RoomError> {
        let epoch = self.pipelines.epoch();
        if let Some(tail) = self.pipelines.tail(room_id) {
            return Ok((tail, epoch));
        }
        Ok((self.head(room_id).await?, epoch))
    }

    /// Builds, authorises and persists an event (on the owner shard). The
    /// room's lock covers building; the COMMIT is awaited after it, so
    /// sends to one room share commits (`rooms::pipeline`).
    pub async fn send(self: &Rc<Self>, req: EventRequest) -> Result<Rc<Pdu>, RoomError> {
        self.check_owner(&req.room_id)?;
        loop {
            let guard = self.room_locks.queue(req.room_id.clone()).await;
            if let Some((device, txn)) = &req.txn {
                let key = (
                    req.sender.to_string(),
                    device.clone(),
                    req.room_id.to_string(),
                    txn.clone(),
                );
                if self.pipelines.pending_txn(&key).is_some() {
                    // The first send with this txn id is committing: its
                    // answer is ours once durable (or we build anew if it
                    // failed).
                    drop(guard);
                    self.pipelines.wait_txn(&key).await;
                    continue;
                }
                let seen = self
                    .txn_memory
                    .seen(&self.db, &key, || self.pipelines.pending_of(&key.0, &key.1))
                    .await;
                if seen == super::txn::Seen::No {
                    // Never used: no query.
                } else if let Some(id) = self.txn_event(&req, device, txn).await? {
                    return self
                        .event(&id)
                        .await?
                        .ok_or_else(|| RoomError::Internal("txn event missing".into()));
                }
            }
            let (head, epoch) = self.write_head(&req.room_id).await?;
            let committing = self.append(&head, epoch, req).await?;
            drop(guard);
            return committing.done().await;
        }
    }

    /// Like [`Rooms::send`], but the request is built under the room's lock
    /// from its current head, so it is based on the state it will apply
    /// to (read-modify-write of state such as a member event's profile or
    /// `m.room.canonical_alias`). `build` must not send to this room
    /// itself. `Ok(None)`: `build` decided there is nothing to send.
    pub async fn send_built<F, Fut>(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        build: F,
    ) -> Result<Option<Rc<Pdu>>, RoomError>
    where
        F: FnOnce(Rc<RoomHead>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<EventRequest>, RoomError>>,
    {
        self.check_owner(room_id)?;
        let guard = self.room_locks.queue(room_id.clone()).await;
        let (head, epoch) = self.write_head(room_id).await?;
        let Some(req) = build(head.clone()).await? else {
            return Ok(None);
        };
        if &req.room_id != room_id {
            return Err(RoomError::Internal(
                "send_built: request for another room".into(),
            ));
        }
        let committing = self.append(&head, epoch, req).await?;
        drop(guard);
        committing.done().await.map(Some)
    }

    async fn txn_event(
        &self,
        req: &EventRequest,
        device: &str,
        txn: &str,
    ) -> Result<Option<OwnedEventId>, RoomError> {
        let row = self
            .db
            .query_opt(
                "SELECT event_id FROM txn_ids \
                 WHERE user_id = $1 AND device_id = $2 AND room_id = $3 AND txn_id = $4",
                &[&req.sender.as_str(), &device, &req.room_id.as_str(), &txn],
            )
            .await?;
        row.map(|r| {
            let id: String = r.get(0)?;
            OwnedEventId::try_from(id).map_err(|e| RoomError::Internal(e.to_string()))
        })
        .transpose()
    }

    /// Persists a prepared `m.room.create` PDU as the first event of its room.
    pub async fn persist_create(
        self: &Rc<Self>,
        pdu: Pdu,
        version: RoomVersion,
        is_public: bool,
    ) -> Result<(), RoomError> {
        self.check_owner(&pdu.room_id)?;
        let _guard = self.room_locks.queue(pdu.room_id.clone()).await;
        state_res::check_state_independent_auth_rules(
            &version.rules().authorization,
            &pdu,
            |_: &ruma::EventId| None::<&Pdu>,
        )
        .map_err(RoomError::Forbidden)?;
        let head = RoomHead {
            version,
            state: Rc::new(StateMap::new()),
            snapshot: None,
            extremities: Vec::new(),
        };
        let place = Placement::timeline(Rc::new(StateMap::new()), None, 1, self.pipelines.epoch());
        self.commit(&head, pdu, place, None, Some(is_public))
            .await?
            .done()
            .await?;
        Ok(())
    }

    /// Builds the event on `head`, checks auth, persists. The caller holds
    /// the room's lock.
    async fn append(
        self: &Rc<Self>,
        head: &RoomHead,
        epoch: u64,
        req: EventRequest,
    ) -> Result<super::pipeline::Committing, RoomError> {
        let txn = req.txn.clone();
        let (pdu, place) = self.prepare_event(head, epoch, req).await?;
        self.commit(head, pdu, place, txn.as_ref(), None).await
    }

    /// Builds, signs and authorises an event on `head` without storing it:
    /// an invite of a user on another server is first co-signed there
    /// (server-server "Inviting to a room"), then applied as a received
    /// PDU. Runs on the owner shard, briefly under the room's lock.
    pub async fn build_unsent(
        self: &Rc<Self>,
        req: EventRequest,
    ) -> Result<(RoomVersion, CanonicalJsonObject), RoomError> {
        self.check_owner(&req.room_id)?;
        let _guard = self.room_locks.queue(req.room_id.clone()).await;
        let (head, epoch) = self.write_head(&req.room_id).await?;
        let (pdu, _) = self.prepare_event(&head, epoch, req).await?;
        Ok((head.version, pdu.json))
    }

    /// The event `req` asks for, built on `head` and authorised, with its
    /// placement.
    async fn prepare_event(
        self: &Rc<Self>,
        head: &RoomHead,
        epoch: u64,
        mut req: EventRequest,
    ) -> Result<(Pdu, Placement), RoomError> {
        let version = head.version;
        let (prevs, place) = self.placement_on(head, epoch).await?;
        let depth = place.depth;
        let before = place.before.clone().unwrap_or_default();
        super::redaction::prepare(&mut req)?;
        super::redaction::authorize(self, head, &req).await?;
        let content_raw = serde_json::value::to_raw_value(&req.content)
            .map_err(|e| RoomError::BadJson(e.to_string()))?;
        let kind = ruma::events::TimelineEventType::from(req.event_type.as_str());
        let (auth_events, auth_pdus) = self
            .select_auth(
                version,
                &before,
                &kind,
                &req.sender,
                req.state_key.as_deref(),
                &content_raw,
            )
            .await?;
        let signed = build_pdu(
            NewEvent {
                room_version: version,
                room_id: Some(req.room_id.clone()),
                sender: req.sender.clone(),
                event_type: req.event_type.clone(),
                state_key: req.state_key.clone(),
                content: req.content.clone(),
                prev_events: prevs.iter().map(|e| e.event_id.clone()).collect(),
                auth_events,
                depth: u64::try_from(depth).unwrap_or_default(),
                origin_server_ts: crate::primitives::unix_ms(),
                redacts: req.redacts.clone(),
            },
            &self.key,
        )
        .map_err(pdu_error)?;
        let pdu = Pdu::from_json(signed.event_id, signed.pdu, version)?;
        super::template::check_auth(version, &pdu, &auth_pdus)?;
        Ok((pdu, place))
    }

    /// Membership of `user` in the room's current state.
    pub async fn membership(
        &self,
        room_id: &OwnedRoomId,
        user: &str,
    ) -> Result<Option<String>, RoomError> {
        let head = self.head(room_id).await?;
        let Some(id) = head
            .state
            .get(&("m.room.member".to_owned(), user.to_owned()))
        else {
            return Ok(None);
        };
        let id =
            OwnedEventId::try_from(id.as_str()).map_err(|e| RoomError::Internal(e.to_string()))?;
        Ok(self.event(&id).await?.and_then(|p| p.membership()))
    }
}

//! The per-shard room service: caches, per-room serialisation, building,
//! authorising and persisting events. Only the room's owner shard writes
//! to it; the service lives in a thread-local so mesh jobs reach it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;

use lru::LruCache;
use ruma::canonical_json::{self, CanonicalJsonObject};
use ruma::events::StateEventType;
use ruma::state_res;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

use crate::db::{GroupCommit, Pool, SqlValue, Write};
use crate::events::{build_pdu, NewEvent, PduError, RoomVersion, ServerKey};
use crate::primitives::Linearizer;
use crate::stream::{Change, EventChange, Pos, RoomChange, StreamWriter};

use super::pdu::Pdu;
use super::state::{self, SnapshotHead, StateMap};
use super::RoomError;

const HEAD_CACHE: usize = 10_000;
const EVENT_CACHE: usize = 50_000;

/// A room as its owner shard needs it to append an event.
#[derive(Debug, Clone)]
pub struct RoomHead {
    pub version: RoomVersion,
    /// Current state.
    pub state: StateMap,
    /// Snapshot of the current state (`None` before the create event).
    pub snapshot: Option<SnapshotHead>,
    /// Forward extremities: the events new events point at.
    pub extremities: Vec<OwnedEventId>,
    pub max_depth: u64,
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
    writer: GroupCommit,
    pub key: Arc<ServerKey>,
    stream: Rc<StreamWriter>,
    room_locks: Linearizer<OwnedRoomId>,
    heads: RefCell<LruCache<OwnedRoomId, Rc<RoomHead>>>,
    events: RefCell<LruCache<OwnedEventId, Rc<Pdu>>>,
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
            events: RefCell::new(LruCache::new(cap(EVENT_CACHE))),
        })
    }

    /// This shard's stream writer.
    pub fn stream(&self) -> Rc<StreamWriter> {
        self.stream.clone()
    }

    /// The owner shard of a room.
    pub fn owner(&self, room_id: &OwnedRoomId) -> usize {
        crate::mesh::shard_for_room(room_id, self.n_shards)
    }

    fn check_owner(&self, room_id: &OwnedRoomId) -> Result<(), RoomError> {
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
        let state = state::load(&self.db, snap).await?;
        let rows = self
            .db
            .query(
                "SELECT f.event_id, e.depth FROM forward_extremities f \
                 JOIN events e USING (event_id) WHERE f.room_id = $1",
                &[&room_id.as_str()],
            )
            .await?;
        let mut extremities = Vec::with_capacity(rows.len());
        let mut max_depth = 0u64;
        for r in rows {
            let id: String = r.get(0)?;
            let depth: i64 = r.get(1)?;
            max_depth = max_depth.max(depth.max(0) as u64);
            extremities
                .push(OwnedEventId::try_from(id).map_err(|e| RoomError::Internal(e.to_string()))?);
        }
        let head = Rc::new(RoomHead {
            version,
            state,
            snapshot,
            extremities,
            max_depth,
        });
        self.heads.borrow_mut().put(room_id.clone(), head.clone());
        Ok(head)
    }

    /// An event by id, from cache or the database.
    pub async fn event(&self, event_id: &OwnedEventId) -> Result<Option<Rc<Pdu>>, RoomError> {
        if let Some(p) = self.events.borrow_mut().get(event_id) {
            return Ok(Some(p.clone()));
        }
        let row = self
            .db
            .query_opt(
                "SELECT e.json, r.room_version FROM events e JOIN rooms r USING (room_id) \
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
        self.events.borrow_mut().put(event_id.clone(), pdu.clone());
        Ok(Some(pdu))
    }

    /// Builds, authorises and persists an event (on the owner shard).
    pub async fn send(&self, req: EventRequest) -> Result<Rc<Pdu>, RoomError> {
        self.check_owner(&req.room_id)?;
        let _guard = self.room_locks.queue(req.room_id.clone()).await;
        if let Some((device, txn)) = &req.txn {
            if let Some(id) = self.txn_event(&req, device, txn).await? {
                return self
                    .event(&id)
                    .await?
                    .ok_or_else(|| RoomError::Internal("txn event missing".into()));
            }
        }
        let head = self.head(&req.room_id).await?;
        self.append(&head, req).await
    }

    /// Like [`Rooms::send`], but the request is built under the room's lock
    /// from its current head, so it is based on the state it will apply
    /// to (read-modify-write of state such as a member event's profile or
    /// `m.room.canonical_alias`). `build` must not send to this room
    /// itself. `Ok(None)`: `build` decided there is nothing to send.
    pub async fn send_built<F, Fut>(
        &self,
        room_id: &OwnedRoomId,
        build: F,
    ) -> Result<Option<Rc<Pdu>>, RoomError>
    where
        F: FnOnce(Rc<RoomHead>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<EventRequest>, RoomError>>,
    {
        self.check_owner(room_id)?;
        let _guard = self.room_locks.queue(room_id.clone()).await;
        let head = self.head(room_id).await?;
        let Some(req) = build(head.clone()).await? else {
            return Ok(None);
        };
        if &req.room_id != room_id {
            return Err(RoomError::Internal(
                "send_built: request for another room".into(),
            ));
        }
        self.append(&head, req).await.map(Some)
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
        &self,
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
            state: StateMap::new(),
            snapshot: None,
            extremities: Vec::new(),
            max_depth: 0,
        };
        self.persist(&head, pdu, None, Some(is_public)).await?;
        Ok(())
    }

    /// Builds the event on `head`, checks auth, persists. The caller holds
    /// the room's lock.
    async fn append(&self, head: &RoomHead, mut req: EventRequest) -> Result<Rc<Pdu>, RoomError> {
        let version = head.version;
        super::redaction::prepare(&mut req)?;
        super::redaction::authorize(self, head, &req).await?;
        let rules = &version.rules().authorization;
        let content_raw = serde_json::value::to_raw_value(&req.content)
            .map_err(|e| RoomError::BadJson(e.to_string()))?;
        let kind = ruma::events::TimelineEventType::from(req.event_type.as_str());
        // Spec server-server-api "Auth events selection".
        let auth_types = state_res::auth_types_for_event(
            &kind,
            &req.sender,
            req.state_key.as_deref(),
            &content_raw,
            rules,
        )
        .map_err(RoomError::BadJson)?;
        let mut auth_events = Vec::new();
        let mut auth_pdus: HashMap<(String, String), Rc<Pdu>> = HashMap::new();
        for (t, k) in auth_types {
            let key = (t.to_string(), k);
            if let Some(id) = head.state.get(&key) {
                let id = OwnedEventId::try_from(id.as_str())
                    .map_err(|e| RoomError::Internal(e.to_string()))?;
                let pdu = self
                    .event(&id)
                    .await?
                    .ok_or_else(|| RoomError::Internal(format!("state event {id} missing")))?;
                auth_events.push(id);
                auth_pdus.insert(key, pdu);
            }
        }
        // v12: the create event is in state but not in auth_events; the
        // state-dependent rules still read it.
        let create_key = ("m.room.create".to_owned(), String::new());
        if let (std::collections::hash_map::Entry::Vacant(slot), Some(id)) = (
            auth_pdus.entry(create_key.clone()),
            head.state.get(&create_key),
        ) {
            let id = OwnedEventId::try_from(id.as_str())
                .map_err(|e| RoomError::Internal(e.to_string()))?;
            if let Some(p) = self.event(&id).await? {
                slot.insert(p);
            }
        }
        let signed = build_pdu(
            NewEvent {
                room_version: version,
                room_id: Some(req.room_id.clone()),
                sender: req.sender.clone(),
                event_type: req.event_type.clone(),
                state_key: req.state_key.clone(),
                content: req.content.clone(),
                prev_events: head.extremities.clone(),
                auth_events,
                depth: head.max_depth + 1,
                origin_server_ts: crate::primitives::unix_ms(),
                redacts: req.redacts.clone(),
            },
            &self.key,
        )
        .map_err(pdu_error)?;
        let pdu = Pdu::from_json(signed.event_id, signed.pdu, version)?;
        // Spec server-server-api "Authorization rules".
        let by_id: HashMap<&ruma::EventId, &Pdu> = auth_pdus
            .values()
            .map(|p| (p.event_id.as_ref(), p.as_ref()))
            .collect();
        state_res::check_state_independent_auth_rules(rules, &pdu, |id: &ruma::EventId| {
            by_id.get(id).copied()
        })
        .map_err(RoomError::Forbidden)?;
        state_res::check_state_dependent_auth_rules(rules, &pdu, |t: &StateEventType, k: &str| {
            auth_pdus
                .get(&(t.to_string(), k.to_owned()))
                .map(|p| p.as_ref())
        })
        .map_err(RoomError::Forbidden)?;
        self.persist(head, pdu, req.txn.as_ref(), None).await
    }

    /// Commits the event with its state delta, current state, extremities
    /// and txn id in one group-commit write, then updates the caches.
    async fn persist(
        &self,
        head: &RoomHead,
        pdu: Pdu,
        txn: Option<&(String, String)>,
        create_public: Option<bool>,
    ) -> Result<Rc<Pdu>, RoomError> {
        let room = pdu.room_id.as_str().to_owned();
        let ticket = self.stream.allocate();
        let stream = ticket.pos();
        let mut new_state = head.state.clone();
        let mut snapshot = head.snapshot;
        let mut snap_write = None;
        // unsigned.prev_content / replaces_state, served by `rooms::serve`.
        let prev_state: Option<String> = pdu
            .state_key
            .as_ref()
            .and_then(|k| head.state.get(&(pdu.kind.to_string(), k.clone())).cloned());
        if let Some(k) = &pdu.state_key {
            new_state.insert((pdu.kind.to_string(), k.clone()), pdu.event_id.to_string());
            let snap = state::plan(
                state::snapshot_id(self.shard, stream),
                head.snapshot,
                &head.state,
                &new_state,
            );
            snapshot = Some(snap.head());
            snap_write = Some(snap);
        }
        let snapshot_id = snapshot
            .map(|s| s.id)
            .ok_or_else(|| RoomError::Internal("first event of a room is not state".into()))?;
        let shard = i32::try_from(self.shard).map_err(|_| RoomError::Internal("shard".into()))?;
        let mut w = Write::new().statement(
            "INSERT INTO events (stream_ordering, room_id, event_id, sender, type, json, \
             state_key, depth, snapshot_id, stream_shard, prev_state_event_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            vec![
                stream.into(),
                room.clone().into(),
                pdu.event_id.to_string().into(),
                pdu.sender.to_string().into(),
                pdu.kind.to_string().into(),
                SqlValue::Jsonb(pdu.json_value()),
                pdu.state_key.clone().into(),
                (pdu.depth as i64).into(),
                snapshot_id.into(),
                shard.into(),
                prev_state.into(),
            ],
        );
        w = super::redaction::record(w, &pdu);
        if let Some(public) = create_public {
            w = w.statement(
                "INSERT INTO rooms (room_id, room_version, creator, is_public, current_snapshot) \
                 VALUES ($1, $2, $3, $4, $5)",
                vec![
                    room.clone().into(),
                    head.version.as_str().into(),
                    pdu.sender.to_string().into(),
                    public.into(),
                    snapshot_id.into(),
                ],
            );
        }
        if let Some(snap) = &snap_write {
            w = state::write(w, &room, snap).statement(
                "UPDATE rooms SET current_snapshot = $2 WHERE room_id = $1",
                vec![room.clone().into(), snap.id.into()],
            );
            if let Some(k) = &pdu.state_key {
                w = w.statement(
                    "INSERT INTO current_state (room_id, type, state_key, event_id, membership) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, type, state_key) \
                     DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership",
                    vec![
                        room.clone().into(),
                        pdu.kind.to_string().into(),
                        k.clone().into(),
                        pdu.event_id.to_string().into(),
                        pdu.membership().into(),
                    ],
                );
            }
        }
        let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
        w = w
            .statement(
                "DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = ANY($2)",
                vec![room.clone().into(), SqlValue::TextArray(prev)],
            )
            .statement(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)",
                vec![room.clone().into(), pdu.event_id.to_string().into()],
            );
        if let Some((device, txn)) = txn {
            w = w.statement(
                "INSERT INTO txn_ids (user_id, device_id, room_id, txn_id, event_id) \
                 VALUES ($1, $2, $3, $4, $5)",
                vec![
                    pdu.sender.to_string().into(),
                    device.clone().into(),
                    room.clone().into(),
                    txn.clone().into(),
                    pdu.event_id.to_string().into(),
                ],
            );
        }
        if let Err(e) = self.writer.submit(w).await {
            // Unknown whether it committed: reload the room from the database.
            // (Dropping the ticket leaves a gap in the stream.)
            self.heads.borrow_mut().pop(&pdu.room_id);
            return Err(e.into());
        }
        let pdu = Rc::new(pdu);
        let change = Change::Room {
            room_id: pdu.room_id.clone(),
            pos: Pos::Persisted(stream),
            what: RoomChange::Event(Arc::new(EventChange {
                event_id: pdu.event_id.clone(),
                sender: pdu.sender.clone(),
                event_type: pdu.kind.to_string(),
                state_key: pdu.state_key.clone(),
                membership: pdu.membership(),
                event: Arc::new(pdu.client_format()),
            })),
        };
        let new_head = Rc::new(RoomHead {
            version: head.version,
            state: new_state,
            snapshot,
            extremities: vec![pdu.event_id.clone()],
            max_depth: head.max_depth.max(pdu.depth),
        });
        self.heads
            .borrow_mut()
            .put(pdu.room_id.clone(), new_head.clone());
        // Push rules run after commit, off this request's path.
        crate::push::engine::after_commit(&new_head, &pdu, stream);
        self.events
            .borrow_mut()
            .put(pdu.event_id.clone(), pdu.clone());
        // Answer only once every shard knows (read-your-writes for /sync).
        ticket.publish(vec![change]).await;
        Ok(pdu)
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

//! Push rules run for every new event, on the room's owner shard, right
//! after the event commits ([`after_commit`], called once by the room
//! service): off the sender's critical path, since the event is already
//! durable. Per room, events are evaluated one at a time in commit order by
//! one worker task, which keeps the room's member list ([`RoomCtx`])
//! up to date from the events themselves.
//!
//! The rows it writes (`push_actions`) lag the event by one group commit.
//! `/sync` must not show the event with stale counts, so it reads counts
//! through [`caught_up`] on the owner shard: it waits (bounded) until every
//! event at or before the sync's token has been evaluated and written —
//! usually nothing is pending and it costs nothing.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::Duration;

use lru::LruCache;
use ruma::events::room::power_levels::{
    RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
};
use ruma::events::TimelineEventType;
use ruma::push::PushConditionPowerLevelsCtx;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};
use serde_json::Value;

use crate::db::types::oid::{BOOL, INT8, JSONB, TEXT};
use crate::db::{Pool, Rows, SqlValue, Write};
use crate::primitives::Notify;
use crate::rooms::service::RoomHead;
use crate::rooms::{Pdu, Rooms};
use crate::shard_state::{current_shard, ShardState};

use super::eval::{self, Candidate, RoomInputs, UserRules};
use super::rules::{self, ACCOUNT_DATA_TYPE};

/// A notified event's `push_actions` row for one action set: the users
/// (space-separated, stored as an array: one row per set, not per user,
/// see migration 33), room, event, position, thread, highlight, actions,
/// time. A batch's rows go as one statement (`db::bulk`): a plain insert
/// that reads nothing the batch writes.
static PUSH_ROWS: Rows = Rows {
    sql: "INSERT INTO push_actions (users, room_id, event_id, stream_ordering, thread_id, \
          highlight, actions, ts) SELECT string_to_array(x.us, ' '), x.r, x.e, x.s, x.t, x.h, \
          x.a, x.ts FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) AS x(us, r, e, s, t, h, a, ts)",
    columns: &[TEXT, TEXT, TEXT, INT8, TEXT, BOOL, JSONB, INT8],
};

/// A notification of the batch being written, for `push::unread`: its
/// users, thread, position and highlight.
type Note = (Vec<String>, String, i64, bool);

/// Rule sets kept per shard (most are the shared default: a pointer each).
const RULES_CACHE: usize = 100_000;
/// Rooms whose member list is kept per shard.
const ROOMS_CACHE: usize = 10_000;
/// How long `/sync` waits for a pending evaluation before answering with
/// the counts it has (only if evaluation is stuck, e.g. database down).
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// Events of one room evaluated together, their rows in one write.
const BATCH: usize = 64;

/// A committed event waiting for evaluation. The head (state after the
/// event) is kept only for state events: a message's state is its
/// predecessor's, and holding a state map per queued message would make a
/// backlog in a big room costly.
struct Item {
    head: Option<Rc<RoomHead>>,
    pdu: Rc<Pdu>,
    pos: i64,
}

#[derive(Default)]
struct RoomQueue {
    queue: VecDeque<Item>,
    /// The lowest position of the batch being evaluated now.
    running: Option<i64>,
    /// Fired after each event is done.
    done: Notify,
}

/// What the rules need of a room, maintained from its events.
#[derive(Debug, Clone, Default)]
pub struct RoomCtx {
    /// Local joined members and their display names.
    pub members: HashMap<OwnedUserId, String>,
    pub power: Option<PushConditionPowerLevelsCtx>,
    pub name: Option<String>,
}

struct Engine {
    queues: RefCell<HashMap<OwnedRoomId, RoomQueue>>,
    rooms: RefCell<LruCache<OwnedRoomId, Rc<RoomCtx>>>,
    rules: RefCell<LruCache<OwnedUserId, Rc<UserRules>>>,
    /// Bumped by every rule change: a load that raced with one is not cached.
    epoch: Cell<u64>,
    /// Events evaluated and ruma evaluations run (for the logs and bench).
    events: Cell<u64>,
    evaluations: Cell<u64>,
}

thread_local! {
    static ENGINE: Rc<Engine> = Rc::new(Engine {
        queues: RefCell::new(HashMap::new()),
        rooms: RefCell::new(LruCache::new(cap(ROOMS_CACHE))),
        rules: RefCell::new(LruCache::new(cap(RULES_CACHE))),
        epoch: Cell::new(0),
        events: Cell::new(0),
        evaluations: Cell::new(0),
    });
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn engine() -> Rc<Engine> {
    ENGINE.with(Rc::clone)
}

/// `(events evaluated, ruma evaluations)` on this shard so far.
pub fn stats() -> (u64, u64) {
    let e = engine();
    (e.events.get(), e.evaluations.get())
}

/// Called by the room service once `pdu` (at stream position `pos`, with
/// the room's state after it in `head`) has committed. Queues it for the
/// room's worker; never waits. Does nothing off a full shard (the room
/// core tests) or with `push.enabled = false`.
pub fn after_commit(head: &Rc<RoomHead>, pdu: &Rc<Pdu>, pos: i64) {
    let Some(state) = current_shard() else {
        return;
    };
    if !state.config.push.enabled {
        return;
    }
    let e = engine();
    let mut queues = e.queues.borrow_mut();
    let q = queues.entry(pdu.room_id.clone()).or_default();
    let idle = q.running.is_none() && q.queue.is_empty();
    let keep_head = pdu.state_key.is_some() || pdu.kind == TimelineEventType::RoomRedaction;
    q.queue.push_back(Item {
        head: keep_head.then(|| head.clone()),
        pdu: pdu.clone(),
        pos,
    });
    if idle {
        let room = pdu.room_id.clone();
        drop(monoio::spawn(worker(state, room)));
    }
}

async fn worker(state: Rc<ShardState>, room: OwnedRoomId) {
    let e = engine();
    loop {
        let batch: Vec<Item> = {
            let mut queues = e.queues.borrow_mut();
            let Some(q) = queues.get_mut(&room) else {
                return;
            };
            if q.queue.is_empty() {
                if let Some(q) = queues.remove(&room) {
                    q.done.notify_all();
                }
                return;
            }
            let n = q.queue.len().min(BATCH);
            let batch: Vec<Item> = q.queue.drain(..n).collect();
            q.running = batch.first().map(|i| i.pos);
            batch
        };
        let mut w = Write::new();
        let mut pushes = Vec::new();
        let mut notes = Vec::new();
        for item in &batch {
            match evaluate_one(&state, &e, item, &mut w, &mut notes).await {
                Ok(Some(p)) => pushes.push(p),
                Ok(None) => {}
                Err(err) => {
                    // This event's notifications are lost; the member
                    // list is rebuilt from the next event's state.
                    tracing::warn!(room = %room, event = %item.pdu.event_id, error = %err,
                        "push rule evaluation failed");
                    e.rooms.borrow_mut().pop(&room);
                }
            }
        }
        if !w.is_empty() {
            let unread = super::unread::local();
            match state.writer.submit(w).await {
                Ok(_) => {
                    let list: Vec<super::unread::Notified<'_>> = notes
                        .iter()
                        .map(|(users, thread, pos, highlight)| super::unread::Notified {
                            users,
                            thread,
                            pos: *pos,
                            highlight: *highlight,
                        })
                        .collect();
                    unread.notified(room.as_str(), &list);
                }
                Err(err) => {
                    // Committed or not: the counts are read again.
                    unread.forget_room(room.as_str());
                    tracing::warn!(room = %room, error = %err, "storing notifications failed");
                    pushes.clear();
                }
            }
        }
        for p in pushes {
            super::gateway::dispatch(&state, p);
        }
        if let Some(q) = e.queues.borrow_mut().get_mut(&room) {
            q.running = None;
            q.done.notify_all();
        }
    }
}

/// Returns once every event of `room` at or before stream position `upto`
/// (of this, the owner, shard) has been evaluated and its rows committed,
/// or after [`CATCH_UP_WAIT`].
pub async fn caught_up(room: &RoomId, upto: i64) {
    let e = engine();
    let deadline = monoio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        let done = {
            let queues = e.queues.borrow();
            let Some(q) = queues.get(room) else {
                return;
            };
            let pending = q.running.is_some_and(|p| p <= upto)
                || q.queue.front().is_some_and(|i| i.pos <= upto);
            if !pending {
                return;
            }
            q.done.clone()
        };
        if monoio::time::timeout_at(deadline, done.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Drops this shard's copy of `user`'s rules (after they changed).
pub fn forget_rules(user: &ruma::UserId) {
    let e = engine();
    e.epoch.set(e.epoch.get().wrapping_add(1));
    e.rules.borrow_mut().pop(user);
}

/// Evaluates one event; its rows join `w`, and what to push is returned.
async fn evaluate_one(
    state: &Rc<ShardState>,
    e: &Engine,
    item: &Item,
    w: &mut Write,
    notes: &mut Vec<Note>,
) -> Result<Option<super::gateway::Push>, String> {
    let rooms = crate::rooms::local().map_err(|x| x.to_string())?;
    let server = state.config.server_name.as_str();
    let ctx = room_ctx(&rooms, e, item, server).await?;
    let pdu = &item.pdu;
    let mut users: Vec<OwnedUserId> = ctx.members.keys().cloned().collect();
    // An invitee is not joined yet but is told (`.m.rule.invite_for_me`).
    if pdu.kind == TimelineEventType::RoomMember && pdu.membership().as_deref() == Some("invite") {
        if let Some(target) = pdu
            .state_key
            .as_deref()
            .and_then(|k| OwnedUserId::try_from(k).ok())
            .filter(|u| u.server_name().as_str() == server && !ctx.members.contains_key(u))
        {
            users.push(target);
        }
    }
    users.retain(|u| *u != pdu.sender);
    if users.is_empty() {
        return Ok(None);
    }
    let rules = rules_for(&state.db, e, &users).await?;
    let candidates: Vec<Candidate> = users
        .into_iter()
        .zip(rules)
        .map(|(user_id, rules)| Candidate {
            display_name: ctx.members.get(&user_id).cloned().unwrap_or_default(),
            user_id,
            rules,
        })
        .collect();
    let event = pdu.client_format();
    let inputs = RoomInputs {
        room_id: pdu.room_id.clone(),
        member_count: ctx.members.len() as u64,
        power_levels: ctx.power.clone(),
    };
    let outcome = eval::evaluate(&event, &pdu.sender, &inputs, &candidates).await;
    e.events.set(e.events.get() + 1);
    e.evaluations
        .set(e.evaluations.get() + outcome.evaluations as u64);
    if outcome.notified.is_empty() {
        return Ok(None);
    }
    let thread = eval::thread_of(&event);
    let ts = crate::primitives::unix_ms_i64();
    for n in &outcome.notified {
        // User ids hold no spaces (spec "User Identifiers": the
        // historical grammar is printable ASCII without space), so one
        // row per action set carries its users joined by spaces.
        let users: Vec<String> = n.users.iter().map(|u| u.to_string()).collect();
        let joined = users.join(" ");
        notes.push((users, thread.clone(), item.pos, n.highlight()));
        let taken = std::mem::replace(w, Write::new());
        *w = taken.rows(
            &PUSH_ROWS,
            vec![
                joined.into(),
                pdu.room_id.as_str().into(),
                pdu.event_id.as_str().into(),
                item.pos.into(),
                thread.clone().into(),
                n.highlight().into(),
                SqlValue::Jsonb(serde_json::to_value(&n.actions).unwrap_or(Value::Null)),
                ts.into(),
            ],
        );
    }
    Ok(Some(super::gateway::Push {
        event: Rc::new(event),
        event_id: pdu.event_id.clone(),
        room_id: pdu.room_id.clone(),
        room_name: ctx.name.clone(),
        sender_display_name: ctx.members.get(&pdu.sender).cloned(),
        notified: outcome.notified,
    }))
}

/// The room's context after `item`: the cached one updated by the event
/// (events come in commit order), or rebuilt from the state after it.
async fn room_ctx(
    rooms: &Rooms,
    e: &Engine,
    item: &Item,
    server: &str,
) -> Result<Rc<RoomCtx>, String> {
    let pdu = &item.pdu;
    let room = &pdu.room_id;
    let changes = matches!(
        (&pdu.kind, pdu.state_key.as_deref()),
        (TimelineEventType::RoomMember, Some(_))
            | (TimelineEventType::RoomPowerLevels, Some(""))
            | (TimelineEventType::RoomCreate, Some(""))
            | (TimelineEventType::RoomName, Some(""))
    );
    let redaction = pdu.kind == TimelineEventType::RoomRedaction;
    let cached = e.rooms.borrow_mut().pop(room);
    let ctx = match cached {
        Some(c) if !redaction && !changes => c,
        Some(c) if !redaction => {
            // Taken out of the cache, so normally not shared: no copy.
            let mut c = Rc::unwrap_or_clone(c);
            match (pdu.kind.clone(), pdu.state_key.as_deref()) {
                (TimelineEventType::RoomMember, Some(k)) => {
                    if let Ok(u) = OwnedUserId::try_from(k) {
                        apply_member(&mut c, u, pdu, server);
                    }
                }
                (TimelineEventType::RoomName, _) => c.name = content_str(pdu, "name"),
                _ => c.power = power(rooms, &*head_of(rooms, item).await?).await?,
            }
            Rc::new(c)
        }
        _ => Rc::new(build(rooms, &*head_of(rooms, item).await?, server).await?),
    };
    e.rooms.borrow_mut().put(room.clone(), ctx.clone());
    Ok(ctx)
}

/// The state after the event: kept for state events; for others the
/// room's current head (newer only if the room moved on meanwhile and the
/// cached context was evicted: then the member list is a little ahead).
async fn head_of(rooms: &Rooms, item: &Item) -> Result<Rc<RoomHead>, String> {
    match &item.head {
        Some(h) => Ok(h.clone()),
        None => rooms
            .head(&item.pdu.room_id)
            .await
            .map_err(|x| x.to_string()),
    }
}

fn content(pdu: &Pdu) -> Value {
    serde_json::from_str(pdu.content.get()).unwrap_or(Value::Null)
}

fn content_str(pdu: &Pdu, key: &str) -> Option<String> {
    content(pdu)[key].as_str().map(str::to_owned)
}

fn apply_member(c: &mut RoomCtx, user: OwnedUserId, pdu: &Pdu, server: &str) {
    if user.server_name().as_str() != server {
        return;
    }
    if pdu.membership().as_deref() == Some("join") {
        let name = content_str(pdu, "displayname").unwrap_or_else(|| user.localpart().to_owned());
        c.members.insert(user, name);
    } else {
        c.members.remove(&user);
    }
}

async fn state_event(rooms: &Rooms, head: &RoomHead, t: &str) -> Result<Option<Rc<Pdu>>, String> {
    let Some(id) = head.state.get(&(t.to_owned(), String::new())) else {
        return Ok(None);
    };
    let id = OwnedEventId::try_from(id.as_str()).map_err(|x| x.to_string())?;
    rooms.event(&id).await.map_err(|x| x.to_string())
}

async fn build(rooms: &Rooms, head: &RoomHead, server: &str) -> Result<RoomCtx, String> {
    let mut c = RoomCtx::default();
    let start = ("m.room.member".to_owned(), String::new());
    let ids: Vec<(String, String)> = head
        .state
        .range(start..)
        .take_while(|((t, _), _)| t == "m.room.member")
        .map(|((_, k), id)| (k.clone(), id.clone()))
        .collect();
    for (k, id) in ids {
        let Ok(user) = OwnedUserId::try_from(k) else {
            continue;
        };
        if user.server_name().as_str() != server {
            continue;
        }
        let id = OwnedEventId::try_from(id).map_err(|x| x.to_string())?;
        if let Some(p) = rooms.event(&id).await.map_err(|x| x.to_string())? {
            apply_member(&mut c, user, &p, server);
        }
    }
    c.power = power(rooms, head).await?;
    c.name = state_event(rooms, head, "m.room.name")
        .await?
        .and_then(|p| content_str(&p, "name"));
    Ok(c)
}

/// The power levels as `sender_notification_permission` reads them (with
/// v12's infinitely powerful creators).
async fn power(
    rooms: &Rooms,
    head: &RoomHead,
) -> Result<Option<PushConditionPowerLevelsCtx>, String> {
    let rules = &head.version.rules().authorization;
    let mut creators: Vec<OwnedUserId> = Vec::new();
    if let Some(create) = state_event(rooms, head, "m.room.create").await? {
        creators.push(create.sender.clone());
        if let Some(extra) = content(&create)["additional_creators"].as_array() {
            creators.extend(
                extra
                    .iter()
                    .filter_map(|u| u.as_str())
                    .filter_map(|u| OwnedUserId::try_from(u).ok()),
            );
        }
    }
    let source = match state_event(rooms, head, "m.room.power_levels").await? {
        Some(p) => match serde_json::from_str::<RoomPowerLevelsEventContent>(p.content.get()) {
            Ok(c) => RoomPowerLevelsSource::Original(c),
            Err(_) => RoomPowerLevelsSource::None,
        },
        None => RoomPowerLevelsSource::None,
    };
    Ok(Some(RoomPowerLevels::new(source, rules, creators).into()))
}

/// Each user's rules, from this shard's cache or (one query for all the
/// missing ones) from their `m.push_rules` account data.
async fn rules_for(
    db: &Pool,
    e: &Engine,
    users: &[OwnedUserId],
) -> Result<Vec<Rc<UserRules>>, String> {
    let mut out: Vec<Option<Rc<UserRules>>> = Vec::with_capacity(users.len());
    let mut missing: Vec<String> = Vec::new();
    {
        let mut cache = e.rules.borrow_mut();
        for u in users {
            let hit = cache.get(u).cloned();
            if hit.is_none() {
                missing.push(u.to_string());
            }
            out.push(hit);
        }
    }
    if !missing.is_empty() {
        let epoch = e.epoch.get();
        let rows = db
            .query(
                "SELECT user_id, content FROM account_data \
                 WHERE room_id = '' AND type = $2 AND user_id = ANY($1)",
                &[&missing, &ACCOUNT_DATA_TYPE],
            )
            .await
            .map_err(|x| x.to_string())?;
        let mut stored: HashMap<String, Value> = HashMap::new();
        for r in rows {
            let user: String = r.get(0).map_err(|x| x.to_string())?;
            let content: Value = r.get(1).map_err(|x| x.to_string())?;
            stored.insert(user, content);
        }
        let default = Rc::new(UserRules::server_default());
        let mut cache = e.rules.borrow_mut();
        for (u, slot) in users.iter().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let r = match stored.get(u.as_str()) {
                Some(content) => Rc::new(UserRules::custom(u, rules::effective(u, Some(content)))),
                None => default.clone(),
            };
            if e.epoch.get() == epoch {
                cache.put(u.clone(), r.clone());
            }
            *slot = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Rc::new(UserRules::server_default())))
        .collect())
}

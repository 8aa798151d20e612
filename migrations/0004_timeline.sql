-- hearth schema v4: reading room history. Room order for pagination,
-- timestamp lookups, redactions, the state event each state event
-- replaced (unsigned.prev_content), forgotten rooms.
-- Design: docs/ARCHITECTURE.md "Reading history".

-- Room order is (depth, stream_shard, stream_ordering): /messages pages
-- walk this index in either direction.
CREATE INDEX events_room_order ON events (room_id, depth, stream_shard, stream_ordering);

-- GET /timestamp_to_event.
CREATE INDEX events_room_ts ON events (room_id, ((json->>'origin_server_ts')::bigint));

-- The state event this state event replaced (NULL: none, or not a state
-- event), written with the event from the room head's current state, so
-- serving unsigned.prev_content needs no state lookup.
ALTER TABLE events ADD COLUMN prev_state_event_id text;

-- Accepted m.room.redaction events. The redacted event keeps its original
-- JSON (federation and auth need it); what is served to clients is redacted.
CREATE TABLE redactions (
    event_id text PRIMARY KEY,
    redacts  text NOT NULL,
    room_id  text NOT NULL
);
CREATE INDEX redactions_redacts ON redactions (redacts);

-- unsigned.transaction_id: find the txn of an event.
CREATE INDEX txn_ids_event ON txn_ids (event_id);

-- POST /rooms/{roomId}/forget. A row counts while the user's current
-- membership event is still `member_event_id` ('' when they had none):
-- joining again (a new member event) un-forgets the room, as in Synapse.
CREATE TABLE room_forgotten (
    user_id         text NOT NULL,
    room_id         text NOT NULL,
    member_event_id text NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- hearth schema v3: rooms, events with their state snapshot, delta-encoded
-- state snapshots, current state, forward extremities, transaction ids.
-- Design: docs/ARCHITECTURE.md "State storage".

-- Events gain what auth, state and ordering need. `stream_ordering` is per
-- stream writer (shard): unique per (stream_shard, stream_ordering).
ALTER TABLE events
    ADD COLUMN state_key    text,
    ADD COLUMN depth        bigint NOT NULL DEFAULT 0,
    ADD COLUMN snapshot_id  bigint,
    ADD COLUMN stream_shard integer NOT NULL DEFAULT 0;
DROP INDEX events_stream_ordering;
CREATE UNIQUE INDEX events_shard_stream ON events (stream_shard, stream_ordering);

CREATE TABLE rooms (
    room_id          text PRIMARY KEY,
    room_version     text NOT NULL,
    creator          text NOT NULL,
    is_public        boolean NOT NULL DEFAULT false,
    -- State after the latest event (the head of the room's snapshot chain).
    current_snapshot bigint NOT NULL
);

-- A snapshot is the full state (parent_id NULL, chain_len 0) or a delta
-- against its parent (chain_len = parent's + 1, bounded).
CREATE TABLE state_snapshots (
    snapshot_id bigint PRIMARY KEY,
    room_id     text NOT NULL,
    parent_id   bigint REFERENCES state_snapshots (snapshot_id),
    chain_len   integer NOT NULL
);

-- Entries of a snapshot: the whole state of a full snapshot, or the
-- changed keys of a delta ('' event_id = key removed).
CREATE TABLE state_snapshot_entries (
    snapshot_id bigint NOT NULL,
    type        text NOT NULL,
    state_key   text NOT NULL,
    event_id    text NOT NULL,
    PRIMARY KEY (snapshot_id, type, state_key)
);

-- The state of each room now, for fast reads (membership lists, /state).
CREATE TABLE current_state (
    room_id    text NOT NULL,
    type       text NOT NULL,
    state_key  text NOT NULL,
    event_id   text NOT NULL,
    membership text,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_membership ON current_state (state_key, membership)
    WHERE type = 'm.room.member';

CREATE TABLE forward_extremities (
    room_id  text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- PUT /send/{type}/{txnId} idempotency, durable across restarts.
CREATE TABLE txn_ids (
    user_id   text NOT NULL,
    device_id text NOT NULL,
    room_id   text NOT NULL,
    txn_id    text NOT NULL,
    event_id  text NOT NULL,
    PRIMARY KEY (user_id, device_id, room_id, txn_id)
);

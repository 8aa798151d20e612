-- hearth schema v11: the event graph. Events whose state is unknown
-- (outliers) or that are soft-failed live beside the timeline, rejected
-- events are remembered, and each timeline event records the room's
-- current state after it was applied.
-- Design: docs/ARCHITECTURE.md "The event graph".

-- The room's current state (the resolution of its forward extremities'
-- states) once this event was applied; /sync's "state as of a stream
-- position". NULL on rows written before v11: read `snapshot_id` then
-- (history was linear, the two were equal).
ALTER TABLE events ADD COLUMN room_snapshot bigint;

-- Events that are part of the room's graph but never served to clients:
-- `outlier` (state unknown: auth chains, events whose prev_events we lack;
-- snapshot_id NULL) and `soft_failed` (state known, authorised by the
-- state before it but not by the current state). An outlier is upgraded by
-- moving it to `events` (or to `soft_failed`) once its state is known.
-- Stream positions are only for unique snapshot ids (no announcement).
CREATE TABLE graph_events (
    event_id        text PRIMARY KEY,
    room_id         text NOT NULL,
    json            jsonb NOT NULL,
    depth           bigint NOT NULL,
    snapshot_id     bigint,
    status          text NOT NULL CHECK (status IN ('outlier', 'soft_failed')),
    stream_shard    integer NOT NULL,
    stream_ordering bigint NOT NULL
);
CREATE INDEX graph_events_room ON graph_events (room_id);

-- Events refused by the authorization rules (server-server-api
-- "Rejections"): never in the graph, remembered so they are not fetched
-- or processed again.
CREATE TABLE rejected_events (
    event_id    text PRIMARY KEY,
    room_id     text NOT NULL,
    reason      text NOT NULL,
    received_ts bigint NOT NULL
);

-- Every event of the graph with what state and ordering need.
CREATE VIEW room_pdus AS
    SELECT event_id, room_id, json, depth, snapshot_id, 'timeline'::text AS status
    FROM events
    UNION ALL
    SELECT event_id, room_id, json, depth, snapshot_id, status FROM graph_events;

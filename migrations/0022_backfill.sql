-- Backward extremities (server-server "Backfilling and retrieving missing
-- events"): events our timeline names as prev_events but does not hold
-- (the prevs of a remote join, the far side of a gap). `/messages` asks
-- the room's other servers for what lies before them (`/backfill`).
-- Written by rooms/commit.rs in the transaction of the event naming them,
-- deleted in the transaction that stores the event itself.
CREATE TABLE backward_extremities (
    room_id     text NOT NULL,
    event_id    text NOT NULL,
    -- Lowest depth of a timeline event naming it: a backfilled event is
    -- stored below its children (docs/ARCHITECTURE.md "Backfill").
    child_depth bigint NOT NULL,
    -- Servers that answered nothing older for it: not asked again.
    tried       text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (room_id, event_id)
);

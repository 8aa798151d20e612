-- Partial-state joins, joining side (MSC3706/MSC3902 "faster joins";
-- server-server "Joining Rooms", `omit_members`): a room joined with a
-- send_join answer that omitted the members. The row is written before
-- the join commits and deleted once the background resync stored the
-- full state at the join; rows left at start are resumed
-- (`federation::resync::resume`). Operators see partial rooms here.
CREATE TABLE partial_state_rooms (
    room_id       text   PRIMARY KEY,
    join_event_id text   NOT NULL,
    -- `servers_in_room` of the answer, the server we joined through first:
    -- whom to ask for the rest of the state and to send our events to.
    servers       text[] NOT NULL,
    since_ts      bigint NOT NULL
);

-- When a room stopped being partial, as a stream position of its owner
-- shard: a non-lazy-loading /sync omits partial rooms (as Synapse does),
-- so one whose `since` predates this position gets the room as newly
-- joined (full state).
CREATE TABLE partial_state_resynced (
    room_id         text   PRIMARY KEY,
    stream_shard    int    NOT NULL,
    stream_ordering bigint NOT NULL,
    done_ts         bigint NOT NULL
);

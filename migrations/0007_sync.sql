-- hearth schema v7: /sync — stored filters, and the indexes sync's
-- queries need.

-- Filters a user stored (POST /user/{userId}/filter); ids count per user
-- from 0 and a filter never changes once stored.
CREATE TABLE user_filters (
    user_id     text NOT NULL,
    filter_id   bigint NOT NULL,
    filter_json jsonb NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- `unsigned.transaction_id` of the syncing device's own events, by id.
CREATE INDEX IF NOT EXISTS txn_ids_event ON txn_ids (event_id);

-- A user's member events in a room (membership moves between join,
-- invite and leave; invite and knock state).
CREATE INDEX events_room_member ON events (room_id, state_key, stream_ordering)
    WHERE type = 'm.room.member';

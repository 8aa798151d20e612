-- hearth schema v1: the version ledger and the event store's first table.

CREATE TABLE schema_version (
    version    bigint PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    stream_ordering bigint NOT NULL,
    room_id         text NOT NULL,
    event_id        text PRIMARY KEY,
    sender          text NOT NULL,
    type            text NOT NULL,
    json            jsonb NOT NULL
);

CREATE UNIQUE INDEX events_stream_ordering ON events (stream_ordering);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);

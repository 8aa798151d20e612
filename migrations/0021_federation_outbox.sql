-- Outbound federation (server-server "Transactions"): one row per
-- destination and event, written in the transaction that commits the
-- event, deleted when the destination answered the transaction carrying
-- it. The destination's queue (on the shard the destination hashes to)
-- sends them in `seq` order; after an outage only the newest per room.
CREATE TABLE federation_outbox (
    seq         bigserial PRIMARY KEY,
    destination text   NOT NULL,
    room_id     text   NOT NULL,
    event_id    text   NOT NULL,
    queued_ts   bigint NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, seq);

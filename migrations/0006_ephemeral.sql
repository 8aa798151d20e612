-- Ephemeral and per-user data (src/ephemeral/). Every table numbered by a
-- shard's stream has (stream_shard, stream_ordering) and is listed in
-- stream::writer::POSITION_TABLES, so positions resume after a restart.

-- Receipts, written on the room's owner shard: one per (room, type, user,
-- thread); thread_id '' = unthreaded.
CREATE TABLE receipts (
    room_id         text    NOT NULL,
    receipt_type    text    NOT NULL,
    user_id         text    NOT NULL,
    thread_id       text    NOT NULL DEFAULT '',
    event_id        text    NOT NULL,
    ts              bigint  NOT NULL,
    stream_shard    integer NOT NULL,
    stream_ordering bigint  NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_shard, stream_ordering);

-- Account data (tags = room 'm.tag', read marker = room 'm.fully_read'),
-- written on the user's shard; room_id '' = global.
CREATE TABLE account_data (
    user_id         text    NOT NULL,
    room_id         text    NOT NULL DEFAULT '',
    type            text    NOT NULL,
    content         jsonb   NOT NULL,
    stream_shard    integer NOT NULL,
    stream_ordering bigint  NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_shard, stream_ordering);

-- To-device inbox, written on the recipient's shard. delivered_p/_e: the
-- recipient shard's token position of the sync response that last carried
-- the message; a later sync at or past it acknowledges (deletes) it.
CREATE TABLE device_inbox (
    user_id         text    NOT NULL,
    device_id       text    NOT NULL,
    stream_shard    integer NOT NULL,
    stream_ordering bigint  NOT NULL,
    sender          text    NOT NULL,
    type            text    NOT NULL,
    content         jsonb   NOT NULL,
    delivered_p     bigint,
    delivered_e     bigint,
    PRIMARY KEY (user_id, device_id, stream_shard, stream_ordering),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- Send-to-device transaction ids, per recipient shard (each decides its
-- part of a retried request alone). Never deleted with the messages, so
-- they keep the shard's highest to-device position for the restart
-- (device_inbox rows go away once acknowledged).
CREATE TABLE to_device_txns (
    sender          text    NOT NULL,
    sender_device   text    NOT NULL,
    txn_id          text    NOT NULL,
    stream_shard    integer NOT NULL,
    stream_ordering bigint  NOT NULL,
    created_ts      bigint  NOT NULL,
    PRIMARY KEY (sender, sender_device, txn_id, stream_shard)
);
CREATE INDEX to_device_txns_stream ON to_device_txns (stream_shard, stream_ordering);

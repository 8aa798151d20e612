-- Inbound federation transactions (server-server "Transactions").
--
-- A transaction's answer is stored with the PDUs it accepted, in one
-- COMMIT, before it is sent: a retried transaction (same origin and txn
-- id) gets the same answer and is not applied twice.
CREATE TABLE federation_inbound_txns (
    origin      text   NOT NULL,
    txn_id      text   NOT NULL,
    response    text   NOT NULL,
    received_ts bigint NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_ts ON federation_inbound_txns (received_ts);

-- PDUs accepted into a 200 and not yet applied to their room (signatures
-- and hashes already checked). Each room's owner shard applies its rows in
-- `seq` order and deletes them; rows left by a crash are picked up at start.
CREATE TABLE federation_staging (
    seq         bigserial PRIMARY KEY,
    room_id     text   NOT NULL,
    event_id    text   NOT NULL,
    origin      text   NOT NULL,
    pdu         text   NOT NULL,
    received_ts bigint NOT NULL
);
CREATE INDEX federation_staging_room ON federation_staging (room_id, seq);

-- EDUs received before hearth acts on them (remote device lists and
-- cross-signing keys: tracked once hearth's users can query remote keys).
CREATE TABLE federation_kept_edus (
    seq         bigserial PRIMARY KEY,
    origin      text   NOT NULL,
    edu_type    text   NOT NULL,
    content     jsonb  NOT NULL,
    received_ts bigint NOT NULL
);

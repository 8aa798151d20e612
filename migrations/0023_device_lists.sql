-- Device lists across servers (server-server "Device Management",
-- "End-to-End Encryption"; Synapse's device_lists_outbound_pokes,
-- device_federation_outbox and device_lists_remote_cache).

-- EDUs that must reach their destination (device list and signing key
-- updates, to-device messages): written with the change they announce,
-- deleted when the destination answered the transaction carrying them 200.
CREATE TABLE federation_edu_outbox (
    seq         bigserial PRIMARY KEY,
    destination text   NOT NULL,
    edu_type    text   NOT NULL,
    content     jsonb  NOT NULL,
    queued_ts   bigint NOT NULL
);
CREATE INDEX federation_edu_outbox_destination ON federation_edu_outbox (destination, seq);

-- Our users' device list streams: `stream_id` of the last
-- m.device_list_update sent (and of /user/devices).
CREATE TABLE device_list_streams (
    user_id   text   PRIMARY KEY,
    stream_id bigint NOT NULL
);

-- Remote users whose device lists we track: the last stream id applied
-- and whether the cache may be stale (a resync failed).
CREATE TABLE remote_device_lists (
    user_id          text    PRIMARY KEY,
    stream_id        bigint  NOT NULL,
    stale            boolean NOT NULL,
    master_key       jsonb,
    self_signing_key jsonb,
    updated_ts       bigint  NOT NULL
);

CREATE TABLE remote_devices (
    user_id      text NOT NULL,
    device_id    text NOT NULL,
    keys         jsonb,
    display_name text,
    PRIMARY KEY (user_id, device_id)
);

-- Kept device list EDUs are processed per user, in arrival order.
CREATE INDEX federation_kept_edus_user ON federation_kept_edus ((content->>'user_id'), seq);

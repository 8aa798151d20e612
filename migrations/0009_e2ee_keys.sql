-- hearth schema v9: end-to-end encryption device keys, one-time keys and
-- fallback keys (client-server API "End-to-End Encryption", key
-- management). Keys die with their device (ON DELETE CASCADE), so deleting
-- a device or logging it out removes its keys.

CREATE TABLE e2e_device_keys (
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    key_json   text NOT NULL,            -- the signed DeviceKeys object as uploaded
    updated_ts bigint NOT NULL,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- A claim deletes its row (DELETE ... RETURNING with SKIP LOCKED): a key is
-- handed out exactly once whichever shard the claims come from.
CREATE TABLE e2e_one_time_keys (
    user_id   text NOT NULL,
    device_id text NOT NULL,
    algorithm text NOT NULL,
    key_id    text NOT NULL,
    key_json  text NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- One fallback key per device and algorithm; claimed keys are marked used,
-- never deleted (spec: it is handed out until replaced).
CREATE TABLE e2e_fallback_keys (
    user_id   text NOT NULL,
    device_id text NOT NULL,
    algorithm text NOT NULL,
    key_id    text NOT NULL,
    key_json  text NOT NULL,
    used      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, device_id, algorithm),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- Device list changes (a device's keys uploaded), at the stream position of
-- the user's shard that announced them: `/keys/changes` (and later
-- `/sync` `device_lists.changed`) read what changed between two tokens.
CREATE TABLE e2e_device_list_changes (
    user_id      text NOT NULL,
    stream_shard integer NOT NULL,
    stream_pos   bigint NOT NULL,
    PRIMARY KEY (stream_shard, stream_pos, user_id)
);

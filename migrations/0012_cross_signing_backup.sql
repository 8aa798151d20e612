-- hearth schema v12: cross-signing keys and signatures, server-side key
-- backups (client-server API "End-to-End Encryption": "Cross-signing",
-- "Server-side key backups").

-- A user's master, self-signing and user-signing keys, as uploaded (signed
-- JSON text: it goes back out unchanged). `public_key` is the unpadded
-- base64 ed25519 key: the id `/keys/signatures/upload` names it by.
CREATE TABLE e2e_cross_signing_keys (
    user_id    text NOT NULL,
    key_type   text NOT NULL CHECK (key_type IN ('master', 'self_signing', 'user_signing')),
    public_key text NOT NULL,
    key_json   text NOT NULL,
    updated_ts bigint NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with `/keys/signatures/upload`, merged into the
-- signed object when it is queried. `target_key_id` is a device id or a
-- cross-signing public key of `target_user`.
CREATE TABLE e2e_cross_signing_signatures (
    target_user   text NOT NULL,
    target_key_id text NOT NULL,
    signer_user   text NOT NULL,
    signer_key_id text NOT NULL,
    signature     text NOT NULL,
    PRIMARY KEY (target_user, target_key_id, signer_user, signer_key_id)
);

-- A change only `visible_to` may see (a signature made with that user's
-- user-signing key is shown to the signer alone); NULL: everyone sharing a
-- room with `user_id`.
ALTER TABLE e2e_device_list_changes ADD COLUMN visible_to text;

-- Backup versions of a user. Deleted versions stay (their keys go): version
-- numbers are never reused, as in Synapse. `etag` moves on every change of
-- the version's keys.
CREATE TABLE e2e_room_keys_versions (
    user_id   text NOT NULL,
    version   bigint NOT NULL,
    algorithm text NOT NULL,
    auth_data text NOT NULL,
    etag      bigint NOT NULL DEFAULT 0,
    deleted   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2e_room_keys (
    user_id             text NOT NULL,
    version             bigint NOT NULL,
    room_id             text NOT NULL,
    session_id          text NOT NULL,
    first_message_index bigint NOT NULL,
    forwarded_count     bigint NOT NULL,
    is_verified         boolean NOT NULL,
    session_data        text NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id),
    FOREIGN KEY (user_id, version) REFERENCES e2e_room_keys_versions (user_id, version)
        ON DELETE CASCADE
);

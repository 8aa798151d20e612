-- hearth schema v2: accounts, devices, access tokens, user-interactive auth
-- sessions and profiles (client-server API: registration, login, devices,
-- profiles).

-- A deactivated user keeps its row (so the id can never be registered
-- again, as in Synapse) with its password and profile cleared.
CREATE TABLE users (
    user_id       text PRIMARY KEY,
    password_hash text,                      -- argon2 PHC string; NULL: no password login
    admin         boolean NOT NULL DEFAULT false,
    is_guest      boolean NOT NULL DEFAULT false,
    deactivated   boolean NOT NULL DEFAULT false,
    created_ts    bigint NOT NULL,
    displayname   text,
    avatar_url    text
);

CREATE TABLE devices (
    user_id      text NOT NULL REFERENCES users (user_id),
    device_id    text NOT NULL,
    display_name text,
    created_ts   bigint NOT NULL,
    last_seen_ts bigint,
    last_seen_ip text,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens die with their device (logout, device deletion, deactivation).
CREATE TABLE access_tokens (
    token      text PRIMARY KEY,
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    created_ts bigint NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX access_tokens_user_device ON access_tokens (user_id, device_id);

-- Shared by all shards: the next request of a UIA flow may land anywhere.
CREATE TABLE ui_auth_sessions (
    session_id text PRIMARY KEY,
    created_ts bigint NOT NULL,
    -- The endpoint the session was started for: it may not change mid-flow.
    uri        text NOT NULL,
    -- The authenticated user re-authenticating (NULL for registration).
    user_id    text,
    completed  text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX ui_auth_sessions_created ON ui_auth_sessions (created_ts);

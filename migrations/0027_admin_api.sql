-- hearth schema v27: what the admin API (Synapse's /_synapse/admin paths)
-- keeps: registration tokens, event reports, blocked rooms, and the status
-- of room deletions and history purges (polled by id, as in Synapse).

-- Registration tokens for m.login.registration_token (Synapse's
-- registration_tokens table). `uses_allowed` NULL: unlimited;
-- `expiry_time` NULL: never (ms since epoch).
CREATE TABLE registration_tokens (
    token        text PRIMARY KEY,
    uses_allowed integer,
    pending      integer NOT NULL DEFAULT 0,
    completed    integer NOT NULL DEFAULT 0,
    expiry_time  bigint
);

-- POST /rooms/{roomId}/report/{eventId} and /rooms/{roomId}/report.
CREATE TABLE event_reports (
    id          bigserial PRIMARY KEY,
    received_ts bigint NOT NULL,
    room_id     text NOT NULL,
    event_id    text,
    user_id     text NOT NULL,
    reason      text,
    score       bigint
);

-- Rooms an admin blocked: local users may not join them.
CREATE TABLE blocked_rooms (
    room_id    text PRIMARY KEY,
    user_id    text NOT NULL,
    created_ts bigint NOT NULL
);

-- Room deletions (v2, async) and history purges: `kind` 'delete' or
-- 'purge'; `status` 'scheduled' | 'active' | 'complete' | 'failed';
-- `result` the shutdown report of a deletion.
CREATE TABLE admin_room_tasks (
    task_id    text PRIMARY KEY,
    kind       text NOT NULL,
    room_id    text NOT NULL,
    status     text NOT NULL,
    error      text,
    result     jsonb,
    created_ts bigint NOT NULL
);
CREATE INDEX admin_room_tasks_room ON admin_room_tasks (room_id);

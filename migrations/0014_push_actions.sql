-- hearth schema v14: push rule outcomes (client-server API "Push
-- Notifications" → "Receiving notifications"). One row per (user, event)
-- whose rules said `notify`, written on the room's owner shard right after
-- the event commits (src/push/eval.rs). Counts in /sync are the rows after
-- the user's latest m.read / m.read.private receipt (per thread: the
-- unthreaded receipt, or the thread's own, whichever is later), and
-- /notifications pages through them newest first by `id`.
--
-- A message in a 1,000-member room writes 999 rows, so the table has only
-- the two indexes its reads need: (user_id, id) for /notifications pages,
-- (user_id, room_id, stream_ordering) for counts. Each event is evaluated
-- once, so no unique (user_id, event_id) is kept.
CREATE TABLE IF NOT EXISTS push_actions (
    id              bigserial,
    user_id         text      NOT NULL,
    room_id         text      NOT NULL,
    event_id        text      NOT NULL,
    -- The event's `events.stream_ordering`, compared with the receipt
    -- event's the way receipts themselves are ordered.
    stream_ordering bigint    NOT NULL,
    -- 'main', or the thread root's event id (`m.thread` relation).
    thread_id       text      NOT NULL,
    highlight       boolean   NOT NULL,
    actions         jsonb     NOT NULL,
    ts              bigint    NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX IF NOT EXISTS push_actions_user_room
    ON push_actions (user_id, room_id, stream_ordering);

-- A pusher dies with the device that set it (spec "Pushers": a logged-out
-- device must stop receiving pushes), like the device's keys.
DELETE FROM pushers p WHERE p.device_id IS NOT NULL AND NOT EXISTS
    (SELECT 1 FROM devices d WHERE d.user_id = p.user_id AND d.device_id = p.device_id);
ALTER TABLE pushers ADD CONSTRAINT pushers_device_fk FOREIGN KEY (user_id, device_id)
    REFERENCES devices (user_id, device_id) ON DELETE CASCADE;

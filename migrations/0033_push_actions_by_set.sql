-- hearth schema v33: `push_actions` holds one row per (event, action set)
-- with its users in an array, where v14 held one row per (user, event).
--
-- Why: a message in an N-member room wrote N-1 rows with two btree entries
-- each. At the neutral load that was ~50 µs of PostgreSQL per send, the
-- largest statement of a durable send, and a 1,000-member room's message
-- cost ~10 ms of inserts that its members' unread counts waited on. Most
-- members of a room share one action set (`.m.rule.message` → notify), so
-- per set it is a row or two per event (bench/RESULTS.md "durable send").
--
-- Reads: counts are `room_id = … AND stream_ordering > … AND user =
-- ANY(users)` over the (room_id, stream_ordering) index (written with `=
-- ANY`, not `@>`, on purpose: with `@>` the planner ANDs in the GIN index,
-- which walks all of the user's rows in every room, ~4× slower when the
-- room's unread rows are few); /notifications pages a user's rows through
-- the GIN index on `users`, newest first by `id`. Purges and rejections
-- delete by room (then event). A count read checks each unread row's
-- array: costlier than the old index scan in a big room with much unread,
-- but it runs only when the per-shard unread memory (`push::unread`)
-- misses.
--
-- `id` orders /notifications and needs no index of its own: a page is
-- found through `users`, then sorted.
CREATE TABLE push_actions_v33 (
    id              bigserial NOT NULL,
    room_id         text      NOT NULL,
    event_id        text      NOT NULL,
    stream_ordering bigint    NOT NULL,
    thread_id       text      NOT NULL,
    highlight       boolean   NOT NULL,
    actions         jsonb     NOT NULL,
    ts              bigint    NOT NULL,
    users           text[]    NOT NULL
);

INSERT INTO push_actions_v33
    (id, room_id, event_id, stream_ordering, thread_id, highlight, actions, ts, users)
SELECT min(id), room_id, event_id, stream_ordering, thread_id, highlight, actions, ts,
       array_agg(user_id ORDER BY user_id)
FROM push_actions
GROUP BY room_id, event_id, stream_ordering, thread_id, highlight, actions, ts;

SELECT setval(pg_get_serial_sequence('push_actions_v33', 'id'),
              greatest((SELECT max(id) FROM push_actions_v33), 1));

DROP TABLE push_actions;
ALTER TABLE push_actions_v33 RENAME TO push_actions;
CREATE INDEX push_actions_room ON push_actions (room_id, stream_ordering);
CREATE INDEX push_actions_users ON push_actions USING gin (users);

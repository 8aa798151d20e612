-- hearth schema v31: a room's forward extremities as ONE row per room.
--
-- `forward_extremities` had a row per extremity: every event deleted one
-- row and inserted one, so a table of a few live rows churned a dead tuple
-- per event, and its index scans walked dead entries until autovacuum
-- passed (30 µs for the one-row DELETE under the send benchmark, the third
-- largest statement; bench/RESULTS.md "durable send"). One row per room
-- whose array is updated in place is a HOT update (the key does not
-- change; fillfactor leaves room on the page): no index entry per event.
CREATE TABLE room_extremities (
    room_id   text PRIMARY KEY,
    event_ids text[] NOT NULL
) WITH (fillfactor = 50);

INSERT INTO room_extremities (room_id, event_ids)
SELECT room_id, array_agg(event_id ORDER BY event_id)
FROM forward_extremities GROUP BY room_id;

DROP TABLE forward_extremities;

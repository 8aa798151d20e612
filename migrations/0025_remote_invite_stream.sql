-- Invites kept for our users to rooms hosted elsewhere (0020) in /sync:
-- each row is numbered by the persisted stream of the shard that wrote it
-- (as account data is), so an incremental sync lists it once, at its
-- position. A rejected (or rescinded) invite stays as `membership =
-- 'leave'` with the leave event, so the next sync lists the room in
-- `rooms.leave` (Synapse's out-of-band membership); a new invite or a
-- join replaces the row.
ALTER TABLE remote_invites
    ADD COLUMN stream_shard    integer NOT NULL DEFAULT 0,
    ADD COLUMN stream_ordering bigint  NOT NULL DEFAULT 0,
    ADD COLUMN membership      text    NOT NULL DEFAULT 'invite',
    ADD COLUMN leave_event_id  text,
    ADD COLUMN leave_event     jsonb;
CREATE INDEX remote_invites_room_user ON remote_invites (room_id, user_id);

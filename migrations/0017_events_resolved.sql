-- An event after which the room's current state changed by more than the
-- event's own key (a state resolution of a fork). /sync computes the state
-- delta for a range holding one, since its timeline alone does not show
-- the new state (rooms/commit.rs, sync/response.rs).
ALTER TABLE events ADD COLUMN resolved boolean NOT NULL DEFAULT false;

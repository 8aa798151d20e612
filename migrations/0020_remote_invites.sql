-- Invites of our users to rooms on other servers (server-server "Inviting
-- to a room"), co-signed by us and kept for the invitee until they accept
-- or reject it (joining through the inviting server).
CREATE TABLE remote_invites (
    event_id          text   PRIMARY KEY,
    room_id           text   NOT NULL,
    user_id           text   NOT NULL,
    room_version      text   NOT NULL,
    event             jsonb  NOT NULL,
    invite_room_state jsonb  NOT NULL,
    received_ts       bigint NOT NULL
);
CREATE INDEX remote_invites_user ON remote_invites (user_id);

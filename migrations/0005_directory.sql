-- hearth schema v5: room aliases and the published room directory
-- (client-server API "Room aliases", "Published room directory").

-- Local aliases only (`#localpart:our.server`). Global data: read and
-- written from any shard; the primary key keeps an alias unique, so two
-- shards creating the same alias at once cannot both win.
CREATE TABLE room_aliases (
    room_alias text PRIMARY KEY,
    room_id    text NOT NULL,
    -- Who created it: may delete it whatever their power in the room.
    creator    text NOT NULL,
    created_ts bigint NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- /publicRooms scans only published rooms.
CREATE INDEX rooms_public ON rooms (room_id) WHERE is_public;

-- Thumbnails other servers made of their media (server-server
-- "GET /_matrix/federation/v1/media/thumbnail"), cached per media id and
-- request: a client's thumbnail of a remote 20 MB photo costs a 20 kB
-- fetch, not the photo. The bytes are in the content store.
CREATE TABLE IF NOT EXISTS remote_media_thumbnails (
    origin       text    NOT NULL,
    media_id     text    NOT NULL,
    width        integer NOT NULL,
    height       integer NOT NULL,
    method       text    NOT NULL,
    animated     boolean NOT NULL,
    content_type text    NOT NULL,
    thumb_sha256 text    NOT NULL,
    size         bigint  NOT NULL,
    created_ts   bigint  NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated)
);

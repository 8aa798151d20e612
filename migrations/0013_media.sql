-- hearth schema v13: the content repository (client-server API, "Content
-- repository"). The bytes live under data_dir/media by their SHA-256; these
-- rows say which mxc:// URI names which content.
--
-- One row per (origin, media_id): origin is our server name for local media
-- (remote media cached over federation gets its own origin later). A row
-- with `sha256` NULL is an `mxc://` URI reserved by `POST /media/v1/create`
-- and not filled yet; it stops counting once `unused_expires_ts` passes.
-- `authenticated`: uploaded while the unauthenticated legacy endpoints were
-- frozen, so they never serve it (as Synapse's column of that name).
CREATE TABLE IF NOT EXISTS media (
    origin            text    NOT NULL,
    media_id          text    NOT NULL,
    user_id           text    NOT NULL,
    created_ts        bigint  NOT NULL,
    unused_expires_ts bigint,
    content_type      text,
    upload_name       text,
    sha256            text,
    size              bigint,
    uploaded_ts       bigint,
    authenticated     boolean NOT NULL,
    PRIMARY KEY (origin, media_id)
);
-- Pending reservations per user (the create limit).
CREATE INDEX IF NOT EXISTS media_pending ON media (user_id) WHERE sha256 IS NULL;

-- Generated thumbnails, cached per source content and request: the
-- thumbnail's own bytes are in the same content store.
CREATE TABLE IF NOT EXISTS media_thumbnails (
    sha256       text    NOT NULL,
    width        integer NOT NULL,
    height       integer NOT NULL,
    method       text    NOT NULL,
    animated     boolean NOT NULL,
    content_type text    NOT NULL,
    thumb_sha256 text    NOT NULL,
    size         bigint  NOT NULL,
    PRIMARY KEY (sha256, width, height, method, animated)
);

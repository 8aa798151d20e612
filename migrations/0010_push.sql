-- hearth schema v10: pushers (client-server API "Push Notifications" →
-- "Pushers"). One row per (user, app_id, pushkey), written on the user's
-- shard. `device_id` is the device that set it, so that removing a device
-- can remove its pushers (as Synapse does with the access token).
CREATE TABLE IF NOT EXISTS pushers (
    user_id             text        NOT NULL,
    app_id              text        NOT NULL,
    pushkey             text        NOT NULL,
    kind                text        NOT NULL,
    app_display_name    text        NOT NULL,
    device_display_name text        NOT NULL,
    profile_tag         text,
    lang                text        NOT NULL,
    data                jsonb       NOT NULL,
    device_id           text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, app_id, pushkey)
);
-- `append: false` removes the same (app_id, pushkey) of other users.
CREATE INDEX IF NOT EXISTS pushers_app_pushkey ON pushers (app_id, pushkey);

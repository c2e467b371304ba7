-- Who belongs to a channel (rooms, direct messages, channels whose members
-- the app manages), projected from the channel's member_joined / member_left
-- events, so that a user's session token sees exactly their channels.

CREATE TABLE channel_members (
    app_id   TEXT   NOT NULL,
    channel  TEXT   NOT NULL,
    user_id  TEXT   NOT NULL,
    -- The stream sequence of the event that made them a member.
    since    BIGINT NOT NULL,
    PRIMARY KEY (app_id, channel, user_id)
);

-- A user's channels.
CREATE INDEX channel_members_by_user ON channel_members (app_id, user_id);

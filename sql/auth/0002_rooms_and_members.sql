-- Rooms, direct messages and channel membership. Every row is scoped by
-- app_id: no query reads or writes across apps.

-- Who may be authorized for a channel besides the grants of their token:
-- members of rooms, of DMs, and of channels the app manages itself.
CREATE TABLE channel_members (
    app_id         TEXT        NOT NULL,
    channel        TEXT        NOT NULL,
    user_id        TEXT        NOT NULL,
    -- Random per membership (a re-join after a leave gets a new one): the
    -- membership events' Nats-Msg-Id is derived from it, so a retried
    -- publish of the same change is stored once and a later re-join is not
    -- mistaken for a duplicate.
    membership_id  TEXT        NOT NULL,
    joined_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, channel, user_id)
);

-- "The channels (rooms, DMs) of this user".
CREATE INDEX channel_members_by_user ON channel_members (app_id, user_id, channel);

CREATE TABLE rooms (
    app_id      TEXT        NOT NULL,
    -- 32 hex digits from a CSPRNG (UUID v4).
    room_id     TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    -- Share code, random base32 from a CSPRNG; looked up by equality on
    -- the unique index, never compared character by character in the app.
    code        TEXT        NOT NULL,
    owner       TEXT        NOT NULL,
    -- presence-room-<room_id>, stored to join with channel_members.
    channel     TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, room_id)
);

CREATE UNIQUE INDEX rooms_by_code ON rooms (app_id, code);
CREATE UNIQUE INDEX rooms_by_channel ON rooms (app_id, channel);

-- One row per pair of users that have a DM channel; user_a < user_b.
CREATE TABLE dms (
    app_id      TEXT        NOT NULL,
    channel     TEXT        NOT NULL,
    -- "C": byte order, the order the service sorts the pair in.
    user_a      TEXT        COLLATE "C" NOT NULL,
    user_b      TEXT        COLLATE "C" NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, channel),
    CHECK (user_a < user_b)
);

CREATE INDEX dms_by_user_a ON dms (app_id, user_a);
CREATE INDEX dms_by_user_b ON dms (app_id, user_b);

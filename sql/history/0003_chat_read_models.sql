-- Chat read models: edits and deletes on messages, per-channel counters,
-- per-user read and delivery cursors. Unread counts cost O(1) row writes per
-- message and per read, whatever a channel's member count: a message writes
-- its own row, its channel's counters and its author's cursor; a read
-- writes the reader's cursor. The count itself is computed when asked:
--   unread = channel_stats.message_count - read_cursors.read_ordinal
--            - (deleted messages after the cursor)

-- A message's position among its channel's messages (1, 2, ...; deleted ones
-- keep theirs), when it was last edited, and when it was deleted (its data is
-- then emptied; the row stays so that pagination has no hole).
ALTER TABLE messages ADD COLUMN ordinal BIGINT;
ALTER TABLE messages ADD COLUMN edited_at BIGINT;
ALTER TABLE messages ADD COLUMN deleted_at BIGINT;

UPDATE messages m SET ordinal = o.n
FROM (SELECT app_id, channel, seq,
             row_number() OVER (PARTITION BY app_id, channel ORDER BY seq) AS n
      FROM messages) o
WHERE m.app_id = o.app_id AND m.channel = o.channel AND m.seq = o.seq;
ALTER TABLE messages ALTER COLUMN ordinal SET NOT NULL;

CREATE INDEX messages_by_id ON messages (app_id, id);
CREATE INDEX messages_deleted ON messages (app_id, channel, seq) WHERE deleted_at IS NOT NULL;

CREATE TABLE channel_stats (
    app_id         TEXT   NOT NULL,
    channel        TEXT   NOT NULL,
    -- Messages ever posted (deleted ones included): the last ordinal.
    message_count  BIGINT NOT NULL DEFAULT 0,
    member_count   BIGINT NOT NULL DEFAULT 0,
    -- The latest message that is not deleted (the inbox preview).
    last_seq       BIGINT,
    last_id        TEXT,
    last_author    TEXT,
    last_data      TEXT,
    last_ts        BIGINT,
    -- When anything was last posted (ms): the inbox order.
    last_activity  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, channel)
);

INSERT INTO channel_stats (app_id, channel, message_count, last_activity)
SELECT app_id, channel, count(*), max(ts) FROM messages GROUP BY app_id, channel;
UPDATE channel_stats s SET last_seq = m.seq, last_id = m.id, last_author = m.author,
       last_data = m.data, last_ts = m.ts
FROM (SELECT DISTINCT ON (app_id, channel) app_id, channel, seq, id, author, data, ts
      FROM messages ORDER BY app_id, channel, seq DESC) m
WHERE s.app_id = m.app_id AND s.channel = m.channel;
INSERT INTO channel_stats (app_id, channel)
SELECT DISTINCT app_id, channel FROM channel_members ON CONFLICT DO NOTHING;
UPDATE channel_stats s SET member_count = c.n
FROM (SELECT app_id, channel, count(*) AS n FROM channel_members GROUP BY app_id, channel) c
WHERE s.app_id = c.app_id AND s.channel = c.channel;

CREATE TABLE read_cursors (
    app_id         TEXT   NOT NULL,
    channel        TEXT   NOT NULL,
    user_id        TEXT   NOT NULL,
    -- Read up to this seq; read_ordinal is the ordinal of the last message
    -- at or below it.
    read_seq       BIGINT NOT NULL DEFAULT 0,
    read_ordinal   BIGINT NOT NULL DEFAULT 0,
    delivered_seq  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, channel, user_id)
);

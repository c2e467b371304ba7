-- History read model: every stored channel event, keyed by its stream
-- sequence, and the projection checkpoint that makes applying it exactly-once
-- in effect.

CREATE TABLE messages (
    app_id     TEXT   NOT NULL,
    channel    TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    id         TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    event      TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    author     TEXT,
    client_id  TEXT,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (app_id, channel, seq)
);

-- The last stream sequence applied by each projection, written in the same
-- transaction as the rows it produced.
CREATE TABLE projection_checkpoints (
    name      TEXT   PRIMARY KEY,
    last_seq  BIGINT NOT NULL
);

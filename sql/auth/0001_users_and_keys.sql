-- Auth service: each app's users and the Ed25519 keys that sign session
-- tokens. Every user row is scoped by app_id.

CREATE TABLE users (
    app_id      TEXT        NOT NULL,
    user_id     TEXT        NOT NULL,
    -- "C" collation: byte order, so `name LIKE 'prefix%'` can use the index.
    name        TEXT        COLLATE "C" NOT NULL,
    avatar_url  TEXT,
    metadata    JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id)
);

-- Name-prefix search, keyset-paginated by (name, user_id).
CREATE INDEX users_by_name ON users (app_id, name, user_id);

-- Signing keys. The one row with retired_at NULL is the current key; a
-- retired key stays published in the JWKS until every token it signed has
-- expired (retired_at + the longest token lifetime).
CREATE TABLE signing_keys (
    kid          TEXT        PRIMARY KEY,
    -- PKCS#8 v2 document of the Ed25519 key pair. Never logged or served.
    private_key  BYTEA       NOT NULL,
    public_key   BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at   TIMESTAMPTZ
);

CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys ((true)) WHERE retired_at IS NULL;

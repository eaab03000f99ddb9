-- The snapshot of the registry: one row per provider, kept equal to Redis at each snapshot,
-- and the history of counts per snapshot. Analysts query these tables (see the README).

CREATE TABLE providers (
    id               text PRIMARY KEY,
    owner_id         text,
    name             text,
    hostname         text,
    ip_address       text,
    location         text,
    -- Effective status when the snapshot read the provider: offline once its lease lapsed.
    status           text NOT NULL,
    gpu_count        integer NOT NULL,
    gpus             jsonb,
    metadata         jsonb,
    registered_at    timestamptz,
    last_seen_at     timestamptz,
    lease_expires_at timestamptz,
    -- When a snapshot last found this row changed.
    snapshot_at      timestamptz NOT NULL,
    -- The whole Redis hash as it was, every field, as a JSON object of strings: what a restore
    -- writes back. Text rather than jsonb so that any string, NUL included, comes back as is.
    redis_hash       text NOT NULL,
    -- Digest of redis_hash and status: a snapshot rewrites only the rows whose digest changed.
    digest           bytea NOT NULL
);

-- lz4 compresses the large values several times faster than the default pglz, for about the
-- same size; a server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE providers
        ALTER COLUMN redis_hash SET COMPRESSION lz4,
        ALTER COLUMN gpus SET COMPRESSION lz4,
        ALTER COLUMN metadata SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 not available: large values stay compressed with pglz';
END
$$;

CREATE INDEX providers_status ON providers (status);
CREATE INDEX providers_owner_id ON providers (owner_id);

CREATE TABLE snapshots (
    id          bigserial PRIMARY KEY,
    taken_at    timestamptz NOT NULL,
    -- The generation marker of the Redis data set this snapshot read.
    generation  text NOT NULL,
    providers   integer NOT NULL,
    gpus        integer NOT NULL,
    added       integer NOT NULL,
    changed     integer NOT NULL,
    removed     integer NOT NULL,
    duration_ms integer NOT NULL,
    forced      boolean NOT NULL DEFAULT false
);

CREATE INDEX snapshots_taken_at ON snapshots (taken_at);

CREATE TABLE snapshot_counts (
    snapshot_id bigint NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    status      text NOT NULL,
    -- Canonical GPU model (lower case, single spaces), or NULL for the row of all models.
    gpu_model   text,
    providers   integer NOT NULL,
    gpus        integer NOT NULL
);

CREATE INDEX snapshot_counts_snapshot_id ON snapshot_counts (snapshot_id);

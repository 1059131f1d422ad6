"""The PostgreSQL schema of FerroHSM's shared state: keys, approvals, revoked tokens, and the
change generations that let nodes cache keys and token answers safely (store/pgfresh.py).

Migration N (1-based) brings the ``state`` component from version N-1 to N (pgdb.migrate records
each in ``schema_migrations``). Append, never edit: a node refuses a database whose version is
above ``len(MIGRATIONS)``. The scripts are inline so they travel inside the one-file build.

Identifiers and names are ``COLLATE "C"``: byte order, whatever the database's locale, so
``ORDER BY id`` is the UUIDv7 (creation) order the page tokens rely on, and names compare exactly.
A key's record is ``bytea``: the authenticated bytes exactly as records.RecordCodec wrote them.
"""

from __future__ import annotations

from typing import LiteralString

from .pgdb import PgDatabase, migrate

COMPONENT = "state"

MIGRATIONS: tuple[LiteralString, ...] = (
    # 1: keys (filterable columns + the authenticated record), their tags, named blobs,
    #    approvals, revoked token ids.
    """
    CREATE TABLE keys (
        id        text COLLATE "C" PRIMARY KEY,
        name      text COLLATE "C" CONSTRAINT keys_name_unique UNIQUE,
        state     text NOT NULL,
        algorithm text NOT NULL,
        usage     text NOT NULL,
        revision  bigint NOT NULL,
        record    bytea NOT NULL
    );
    CREATE INDEX keys_by_state ON keys (state, id);
    CREATE TABLE key_tags (
        tag    text COLLATE "C" NOT NULL,
        key_id text COLLATE "C" NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
        PRIMARY KEY (tag, key_id)
    );
    CREATE INDEX key_tags_by_key ON key_tags (key_id);
    CREATE TABLE key_meta (
        name  text COLLATE "C" PRIMARY KEY,
        value bytea NOT NULL
    );
    CREATE TABLE approvals (
        id          text COLLATE "C" PRIMARY KEY,
        state       text NOT NULL,
        key_id      text COLLATE "C" NOT NULL,
        action      text COLLATE "C" NOT NULL,
        expires_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL,
        executed_at timestamptz,
        revision    bigint NOT NULL,
        record      text NOT NULL
    );
    CREATE INDEX approvals_by_state ON approvals (state, expires_at);
    CREATE INDEX approvals_by_key ON approvals (key_id, action, executed_at);
    CREATE TABLE revoked_tokens (
        jti   text COLLATE "C" PRIMARY KEY,
        until double precision NOT NULL
    );
    CREATE INDEX revoked_tokens_by_until ON revoked_tokens (until);
    """,
    # 2: change generations (store/pgfresh.py). A statement-level trigger bumps the row of the
    #    table a statement changed, in the writer's own transaction: every writer (any node,
    #    the scheduler, a restore, someone at psql) is counted, and readers see the new number
    #    only once the change itself is committed (a SEQUENCE would show it before).
    """
    CREATE TABLE ferrohsm_generation (
        name text COLLATE "C" PRIMARY KEY,
        gen  bigint NOT NULL
    );
    INSERT INTO ferrohsm_generation (name, gen) VALUES ('keys', 1), ('revoked_tokens', 1);
    CREATE FUNCTION ferrohsm_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN  -- the counter beside the changed table, whatever the writer's search_path
        EXECUTE format('UPDATE %I.ferrohsm_generation SET gen = gen + 1 WHERE name = $1',
                       TG_TABLE_SCHEMA) USING TG_ARGV[0];
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER keys_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON keys
        FOR EACH STATEMENT EXECUTE FUNCTION ferrohsm_bump_generation('keys');
    CREATE TRIGGER revoked_tokens_generation
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON revoked_tokens
        FOR EACH STATEMENT EXECUTE FUNCTION ferrohsm_bump_generation('revoked_tokens');
    """,
    # 3: import jobs (store/postgres_importjobs.py): a job made through one node is used
    #    through another; the row is the service's sealed blob, never a key in clear.
    """
    CREATE TABLE import_jobs (
        job_id  text COLLATE "C" PRIMARY KEY,
        sealed  bytea NOT NULL,
        created timestamptz NOT NULL DEFAULT now()
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def prepare(db: PgDatabase) -> int:
    """Migrate the shared-state schema (every store calls it; all but the first find it done)."""
    return migrate(db, COMPONENT, MIGRATIONS)

-- Projects, withering tokens and audit rows (SPEC §4, §10). Constraint names are spelled out because
-- the store maps them to the field a ValueError names.

CREATE TABLE projects (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL CONSTRAINT projects_name_key UNIQUE,
    api_key           TEXT NOT NULL,
    upstream_base_url TEXT,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    deactivated_at    TIMESTAMPTZ
);

CREATE TABLE tokens (
    id                    TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL CONSTRAINT tokens_project_id_fkey REFERENCES projects (id),
    token_hash            TEXT NOT NULL CONSTRAINT tokens_token_hash_key UNIQUE,
    token_hint            TEXT NOT NULL DEFAULT '',
    expires_at            TIMESTAMPTZ,
    is_active             BOOLEAN NOT NULL DEFAULT TRUE,
    max_requests          BIGINT,
    request_count         BIGINT NOT NULL DEFAULT 0,
    rate_limit_per_minute INTEGER,
    cache_hit_count       BIGINT NOT NULL DEFAULT 0,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at          TIMESTAMPTZ,
    deactivated_at        TIMESTAMPTZ
);
CREATE INDEX tokens_project_id_idx ON tokens (project_id, created_at);
CREATE INDEX tokens_expires_at_idx ON tokens (expires_at);

CREATE TABLE audit_events (
    id         TEXT PRIMARY KEY,
    timestamp  TIMESTAMPTZ NOT NULL,
    action     TEXT NOT NULL,
    result     TEXT NOT NULL CONSTRAINT audit_events_result_check CHECK (result IN ('success', 'denied', 'error')),
    reason     TEXT,
    actor      TEXT NOT NULL DEFAULT 'system',
    request_id TEXT,
    project_id TEXT,
    token_id   TEXT,
    client_ip  TEXT,
    user_agent TEXT,
    method     TEXT,
    path       TEXT,
    details    JSONB NOT NULL DEFAULT '{}'::jsonb
);
-- One index per AuditQuery filter, each ending in timestamp to serve "newest first" as well.
CREATE INDEX audit_events_timestamp_idx ON audit_events (timestamp);
CREATE INDEX audit_events_action_idx ON audit_events (action, timestamp);
CREATE INDEX audit_events_result_idx ON audit_events (result, timestamp);
CREATE INDEX audit_events_project_id_idx ON audit_events (project_id, timestamp);
CREATE INDEX audit_events_token_id_idx ON audit_events (token_id, timestamp);
CREATE INDEX audit_events_request_id_idx ON audit_events (request_id);
CREATE INDEX audit_events_actor_idx ON audit_events (actor, timestamp);

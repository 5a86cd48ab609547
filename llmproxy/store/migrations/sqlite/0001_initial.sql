-- Projects, withering tokens and audit rows (SPEC §4, §10).
-- Timestamps are UTC text of one fixed width ("2024-01-02T03:04:05.000006Z") so that text order is time
-- order; booleans are 0/1. Every timestamp is written by the application, hence no defaults.

CREATE TABLE projects (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    api_key           TEXT NOT NULL,
    upstream_base_url TEXT,
    is_active         INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    deactivated_at    TEXT
);

CREATE TABLE tokens (
    id                    TEXT PRIMARY KEY,
    project_id            TEXT NOT NULL REFERENCES projects (id),
    token_hash            TEXT NOT NULL UNIQUE,
    token_hint            TEXT NOT NULL DEFAULT '',
    expires_at            TEXT,
    is_active             INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    max_requests          INTEGER,
    request_count         INTEGER NOT NULL DEFAULT 0,
    rate_limit_per_minute INTEGER,
    cache_hit_count       INTEGER NOT NULL DEFAULT 0,
    created_at            TEXT NOT NULL,
    last_used_at          TEXT,
    deactivated_at        TEXT
);
CREATE INDEX tokens_project_id_idx ON tokens (project_id, created_at);
CREATE INDEX tokens_expires_at_idx ON tokens (expires_at);

CREATE TABLE audit_events (
    id         TEXT PRIMARY KEY,
    timestamp  TEXT NOT NULL,
    action     TEXT NOT NULL,
    result     TEXT NOT NULL CHECK (result IN ('success', 'denied', 'error')),
    reason     TEXT,
    actor      TEXT NOT NULL DEFAULT 'system',
    request_id TEXT,
    project_id TEXT,
    token_id   TEXT,
    client_ip  TEXT,
    user_agent TEXT,
    method     TEXT,
    path       TEXT,
    details    TEXT NOT NULL DEFAULT '{}'
);
-- One index per AuditQuery filter, each ending in timestamp to serve "newest first" as well.
CREATE INDEX audit_events_timestamp_idx ON audit_events (timestamp);
CREATE INDEX audit_events_action_idx ON audit_events (action, timestamp);
CREATE INDEX audit_events_result_idx ON audit_events (result, timestamp);
CREATE INDEX audit_events_project_id_idx ON audit_events (project_id, timestamp);
CREATE INDEX audit_events_token_id_idx ON audit_events (token_id, timestamp);
CREATE INDEX audit_events_request_id_idx ON audit_events (request_id);
CREATE INDEX audit_events_actor_idx ON audit_events (actor, timestamp);

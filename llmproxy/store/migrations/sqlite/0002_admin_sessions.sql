-- Admin UI sessions and failed management sign-ins, shared by every instance on this database (issue 16).
-- A session is found by the SHA-256 of its cookie value: the table never holds a usable cookie.

CREATE TABLE admin_sessions (
    id_hash      TEXT PRIMARY KEY,
    csrf_token   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
CREATE INDEX admin_sessions_created_at_idx ON admin_sessions (created_at);

-- One row per wrong management token, kept for the throttle's window only.
CREATE TABLE auth_failures (
    client    TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE INDEX auth_failures_client_idx ON auth_failures (client, failed_at);
CREATE INDEX auth_failures_failed_at_idx ON auth_failures (failed_at);

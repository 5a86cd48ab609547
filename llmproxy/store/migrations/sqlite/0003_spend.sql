-- Spend control (issue 17): what tokens and projects may use, what they used, and daily usage rows.
-- Lifetime totals live on the token and project rows (budgets compare against them); usage_daily holds
-- one row per (day, project, token, model) for GET /manage/usage, kept USAGE_RETENTION_DAYS.
-- Every total moves by increments (x = x + $n) in the flush's one transaction, so instances add up.

ALTER TABLE tokens ADD COLUMN name TEXT;
ALTER TABLE tokens ADD COLUMN metadata TEXT;
ALTER TABLE tokens ADD COLUMN max_tokens INTEGER;
ALTER TABLE tokens ADD COLUMN max_cost_usd REAL;
ALTER TABLE tokens ADD COLUMN tokens_per_minute INTEGER;
ALTER TABLE tokens ADD COLUMN allowed_models TEXT;
ALTER TABLE tokens ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;

ALTER TABLE projects ADD COLUMN max_tokens INTEGER;
ALTER TABLE projects ADD COLUMN max_cost_usd REAL;
ALTER TABLE projects ADD COLUMN tokens_per_minute INTEGER;
ALTER TABLE projects ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;

CREATE TABLE usage_daily (
    day                TEXT NOT NULL,  -- YYYY-MM-DD (UTC)
    project_id         TEXT NOT NULL,
    token_id           TEXT NOT NULL,
    model              TEXT NOT NULL,  -- '' when the request named none
    requests           INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    cost_usd           REAL NOT NULL DEFAULT 0,
    unpriced_requests  INTEGER NOT NULL DEFAULT 0,  -- with tokens, for a model no price is known for
    estimated_requests INTEGER NOT NULL DEFAULT 0,  -- tokens counted locally: the upstream reported none
    PRIMARY KEY (day, project_id, token_id, model)
);
CREATE INDEX usage_daily_project_idx ON usage_daily (project_id, day);
CREATE INDEX usage_daily_token_idx ON usage_daily (token_id, day);

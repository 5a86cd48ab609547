"""Names SPEC.md fixes, spelled out once for the tests (never imported from the code under test)."""

# SPEC §10: the fields of an audit record, in the JSON lines and in GET /manage/audit.
AUDIT_FIELDS = frozenset(
    {
        "id",
        "timestamp",
        "action",
        "result",
        "reason",
        "actor",
        "request_id",
        "project_id",
        "token_id",
        "client_ip",
        "user_agent",
        "method",
        "path",
        "details",
    }
)

"""Budgets and tokens per minute of the tokens the Authority caches: which to check for a token (its own and
its project's), the one check before a request, and forgetting those no longer in use.

A budget check reads what this instance knows (``Spend``: the shared totals of the last flush plus its own
usage since), so it awaits nothing; a TPM check reads the shared window (one Redis call when limits are
shared).
"""

from __future__ import annotations

from collections.abc import Container

from llmproxy.auth.ledger import Ledger, Spend
from llmproxy.auth.token_rate import TokenRate
from llmproxy.errors import Refusal
from llmproxy.store.base import Project, SpendTotal, Token

__all__ = ("Refused", "SpendLimits")

Refused = tuple[Refusal, dict[str, str] | None, str | None]  # (refusal, headers, message)
Windows = tuple[tuple[str, int], ...]  # (window key, tokens per minute)


class SpendLimits:
    """The ledger's budgets and the TPM windows, as the Authority's cache entries use them."""

    def __init__(self, ledger: Ledger, tpm: TokenRate) -> None:
        self.ledger = ledger
        self.tpm = tpm
        ledger.charge = tpm.charge

    def limits_of(self, token: Token, project: Project) -> tuple[tuple[Spend, ...], Windows]:
        """(the Spends, the TPM windows) to check before each request of this token."""
        return self._budgets(token, project), self._windows(token, project)

    async def refusal(self, budgets: tuple[Spend, ...], windows: Windows) -> Refused | None:
        """Why the request must be refused, or None: a budget spent, or a full TPM window."""
        for spend in budgets:
            if spend.spent:
                return Refusal.BUDGET_EXCEEDED, None, None
        for key, limit in windows:
            verdict = await self.tpm.check(key, limit)
            if not verdict.allowed:
                message = f"Token rate limit exceeded: {limit} tokens per minute"
                return Refusal.RATE_LIMITED, {"Retry-After": str(verdict.retry_after)}, message
        return None

    def forget_idle(self, cached_tokens: Container[str], cached_projects: Container[str]) -> None:
        """Stop watching the budgets of tokens and projects no longer cached, once nothing of theirs waits."""
        ledger = self.ledger
        for token_id in [t for t, spend in ledger.tokens.items() if t not in cached_tokens and spend.idle]:
            del ledger.tokens[token_id]
        for project_id in [p for p, s in ledger.projects.items() if p not in cached_projects and s.idle]:
            del ledger.projects[project_id]

    def _budgets(self, token: Token, project: Project) -> tuple[Spend, ...]:
        """One Spend per id, shared by every cached entry and updated by the ledger as usage is recorded."""
        found = []
        for spends, key, row in (
            (self.ledger.tokens, token.id, token),
            (self.ledger.projects, project.id, project),
        ):
            if row.max_tokens is None and row.max_cost_usd is None:
                spends.pop(key, None)
                continue
            total = SpendTotal(row.prompt_tokens + row.completion_tokens, row.cost_usd)
            spend = spends.get(key)
            if spend is None:
                spend = spends[key] = Spend(row.max_tokens, row.max_cost_usd, total.tokens, total.cost_usd)
            else:  # a reload (a change, or the TTL): the new limits, and totals no older than the last flush
                spend.limit(row.max_tokens, row.max_cost_usd, total if total.tokens >= spend.tokens else None)
            found.append(spend)
        return tuple(found)

    def _windows(self, token: Token, project: Project) -> Windows:
        """Where set, the token's and its project's window; the ledger charges every response of theirs."""
        found = []
        for key, limit in (
            (f"token:{token.id}", token.tokens_per_minute),
            (f"project:{project.id}", project.tokens_per_minute),
        ):
            if limit is None:
                self.ledger.tpm_keys.discard(key)
                continue
            self.ledger.tpm_keys.add(key)
            found.append((key, limit))
        return tuple(found)

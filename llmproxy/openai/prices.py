"""What a model's tokens cost: the bundled `genai-prices` table (offline, no update thread), overridden by
the operator's PRICES_PATH entries. The one module that knows genai-prices.

A model name is resolved once (OpenAI's models first, then the provider whose names it matches) into a
``Rates`` of floats and remembered (bounded: names come from clients); a cost is then a few multiplications.
A model nobody prices costs None, never a guess.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from llmproxy.config_prices import ModelPrice

__all__ = ("PriceTable", "Rates")

log = logging.getLogger(__name__)

_MAX_NAMES = 4096  # model names remembered; past this the oldest are forgotten (resolved again if seen)
_MAX_NAME_LENGTH = 256
_REFRESH_S = 86_400.0  # the bundled table dates some prices: resolve again once a day
_PER = 1_000_000.0
_UNKNOWN = object()  # not resolved yet (None is a resolved answer: no price)

Tiered = tuple[tuple[int, float], ...]  # ((0, base), (above, rate), …): the rate of the last tier passed


class Rates(NamedTuple):
    """USD per 1M tokens, each as tiers by prompt size (genai-prices' "cliff": one rate for all tokens)."""

    input: Tiered
    output: Tiered
    cached: Tiered

    def cost(self, prompt: int, completion: int, cached: int) -> float:
        """USD for one request: cached prompt tokens at the cached rate, the rest of the prompt at input."""
        cached = min(max(cached, 0), prompt)
        return (
            (prompt - cached) * _rate(self.input, prompt)
            + cached * _rate(self.cached, prompt)
            + completion * _rate(self.output, prompt)
        ) / _PER


def _rate(tiers: Tiered, prompt: int) -> float:
    rate = tiers[0][1]
    if len(tiers) == 1:  # most models: one rate (no slice made per request)
        return rate
    for above, tier_rate in tiers[1:]:
        if prompt > above:
            rate = tier_rate
    return rate


def _flat(per_million: float) -> Tiered:
    return ((0, float(per_million)),)


def _from_operator(price: ModelPrice) -> Rates:
    cached = price.input if price.cached is None else price.cached
    return Rates(_flat(price.input), _flat(price.output), _flat(cached))


class PriceTable:
    """``cost(model, prompt, completion, cached)`` → USD or None for a model nobody prices."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None, *, bundled: bool = True) -> None:
        self._overrides = {name: _from_operator(p) for name, p in (overrides or {}).items()}
        self._lower = {name.lower(): rates for name, rates in self._overrides.items()}
        self._known: dict[str, Rates | None] = {}
        self._resolved_at = time.monotonic()
        self._providers: list[Any] = _bundled_providers() if bundled else []
        self._openai = next((p for p in self._providers if p.id == "openai"), None)

    def rates(self, model: str) -> Rates | None:
        """The model's rates; None when neither PRICES_PATH nor the bundled table knows it."""
        known = self._known
        rates = known.get(model, _UNKNOWN)
        if rates is not _UNKNOWN:
            return rates  # type: ignore[return-value]  # (a Rates or None: only the sentinel is neither)
        if len(model) > _MAX_NAME_LENGTH:  # no model is named so: not worth remembering
            return None
        now = time.monotonic()
        if now - self._resolved_at > _REFRESH_S:
            known.clear()
            self._resolved_at = now
        elif len(known) >= _MAX_NAMES:
            del known[next(iter(known))]
        found = known[model] = self._resolve(model)
        return found

    def cost(self, model: str | None, prompt: int, completion: int, cached: int = 0) -> float | None:
        if model is None:
            return None
        rates = self.rates(model)
        return None if rates is None else rates.cost(prompt, completion, cached)

    def _resolve(self, model: str) -> Rates | None:
        found = self._overrides.get(model) or self._lower.get(model.lower())
        if found is not None or not self._providers:
            return found
        try:
            return self._bundled(model)
        except Exception:  # a table entry we cannot read is an unpriced model, not a failed request
            log.exception("genai-prices could not price %r", model[:80])
            return None

    def _bundled(self, model: str) -> Rates | None:
        info = self._openai.find_model(model, all_providers=self._providers) if self._openai else None
        if info is None:
            ref = model.lower()
            provider = next(
                (p for p in self._providers if p.model_match is not None and p.model_match.is_match(ref)),
                None,
            )
            info = provider.find_model(model, all_providers=self._providers) if provider else None
        if info is None:
            return None
        prices = info.get_prices(datetime.now(UTC))
        rates = (prices.input_mtok, prices.output_mtok, prices.cache_read_mtok)
        if rates[0] is None and rates[1] is None:
            return None  # priced per image, second or request only: not in tokens
        input_rate = _tiers(rates[0])
        return Rates(input_rate, _tiers(rates[1]), input_rate if rates[2] is None else _tiers(rates[2]))


def _tiers(price: Any) -> Tiered:
    """genai-prices' Decimal, TieredPrices or None (free) as tiers of floats."""
    if price is None:
        return _flat(0.0)
    if isinstance(price, Decimal | int | float):
        return _flat(float(price))
    return ((0, float(price.base)), *((int(t.start), float(t.price)) for t in price.tiers))


def _bundled_providers() -> list[Any]:
    """genai-prices' bundled snapshot (imported here, not at module import: ~0.4 s and ~30 MB that only
    the server needs). Never its UpdatePrices, which would fetch prices from the network."""
    from genai_prices import data_snapshot

    providers: list[Any] = data_snapshot.get_snapshot().providers
    return providers

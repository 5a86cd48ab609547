"""PRICES_PATH: the operator's price file, read once at start: model → USD per 1M tokens.

```yaml
my-finetune:            # the model name as requests and responses spell it
  input: 0.30           # per 1M prompt tokens
  output: 1.20          # per 1M completion tokens
  cached: 0.15          # per 1M cached prompt tokens (optional: the input price)
```
Entries override the bundled table (``openai/prices.py``) or add models it does not know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import yaml

__all__ = ("ModelPrice", "load_prices")

_Rate = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
_MAX_MODELS = 10_000


class ModelPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """USD per 1M tokens; ``cached`` None bills cached prompt tokens at ``input``."""

    input: _Rate
    output: _Rate
    cached: _Rate | None = None


def load_prices(path: str) -> dict[str, ModelPrice]:
    """The price file's entries; ValueError saying what is wrong (unreadable, not a mapping, a bad rate)."""
    try:
        data = yaml.safe_load(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {str(exc).replace(chr(10), ' ')}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or len(data) > _MAX_MODELS:
        raise ValueError(f"{path}: expected a mapping of model name to {{input, output, cached}}")
    prices: dict[str, ModelPrice] = {}
    for model, entry in data.items():
        name = str(model).strip()
        if not name:
            raise ValueError(f"{path}: a model name is empty")
        try:
            prices[name] = msgspec.convert(entry, ModelPrice, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"{path}: {name}: {exc}") from None
    return prices

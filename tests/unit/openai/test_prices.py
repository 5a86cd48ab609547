"""The price table: the bundled genai-prices rates, the operator's PRICES_PATH over them, None for the unknown."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price

from llmproxy import config
from llmproxy.config_prices import ModelPrice
from llmproxy.errors import ConfigError
from llmproxy.openai.prices import PriceTable


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o", "o3"])
def test_a_known_model_costs_what_genai_prices_says_to_the_cent(table: PriceTable, model: str) -> None:
    prompt, completion, cached = 123_456, 7_890, 100_000
    expected = calc_price(
        Usage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached),
        model_ref=model,
        provider_id="openai",
    ).total_price
    cost = table.cost(model, prompt, completion, cached)
    assert cost is not None
    assert abs(Decimal(str(cost)) - expected) < Decimal("0.000001")


def test_gpt_4o_mini_is_priced_per_million_tokens(table: PriceTable) -> None:
    # $0.15 per 1M prompt tokens, $0.60 per 1M completion tokens, cached prompt tokens at $0.075
    assert table.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert table.cost("gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.60)
    assert table.cost("gpt-4o-mini", 1_000_000, 0, cached=1_000_000) == pytest.approx(0.075)


def test_another_providers_model_is_found_by_its_name(table: PriceTable) -> None:
    assert table.cost("claude-3-5-sonnet-latest", 1_000_000, 1_000_000) == pytest.approx(3 + 15)


def test_a_tiered_price_applies_the_tier_to_every_token_past_its_threshold(table: PriceTable) -> None:
    below = table.cost("gemini-2.5-pro", 200_000, 0)
    above = table.cost("gemini-2.5-pro", 200_001, 0)
    assert below == pytest.approx(200_000 * 1.25 / 1e6)
    assert above == pytest.approx(200_001 * 2.5 / 1e6)


@pytest.mark.parametrize("model", ["no-such-model", "x" * 1000, "", None])
def test_an_unknown_model_costs_none_never_a_guess(table: PriceTable, model: str | None) -> None:
    assert table.cost(model, 10, 10) is None


def test_the_operators_prices_override_and_add_models() -> None:
    table = PriceTable(
        {
            "gpt-4o-mini": ModelPrice(input=1, output=2),
            "my-finetune": ModelPrice(input=3, output=4, cached=0.5),
        }
    )
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000, cached=500_000) == pytest.approx(1 + 2)
    assert table.cost("my-finetune", 2_000_000, 1_000_000, cached=1_000_000) == pytest.approx(3 + 0.5 + 4)
    assert table.cost("My-Finetune", 1_000_000, 0) == pytest.approx(3)


def test_without_the_bundled_table_only_the_operators_models_are_priced() -> None:
    table = PriceTable({"local-llama": ModelPrice(input=0, output=0)}, bundled=False)
    assert table.cost("local-llama", 5, 5) == 0.0
    assert table.cost("gpt-4o-mini", 5, 5) is None


def test_remembered_names_are_bounded(table: PriceTable) -> None:
    for n in range(5000):
        table.rates(f"made-up-{n}")
    assert len(table._known) <= 4096


def test_prices_path_is_read_at_load(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "my-finetune:\n  input: 0.30\n  output: 1.2\n  cached: 0.15\nfree:\n  input: 0\n  output: 0\n"
    )
    settings = config.load({"PRICES_PATH": str(path)})
    assert settings.usage.prices == {
        "my-finetune": ModelPrice(input=0.3, output=1.2, cached=0.15),
        "free": ModelPrice(input=0, output=0),
    }


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("m:\n  input: 1\n", "output"),
        ("m:\n  input: -1\n  output: 1\n", "input"),
        ("m:\n  input: 1\n  output: 1\n  per: 2\n", "per"),
        ("m: [1\n", "cannot read"),
    ],
)
def test_a_bad_prices_file_is_a_config_error_naming_what_is_wrong(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"PRICES_PATH: .*{says}"):
        config.load({"PRICES_PATH": str(path)})


def test_a_missing_prices_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PRICES_PATH: file not found"):
        config.load({"PRICES_PATH": str(tmp_path / "nope.yaml")})


def test_usage_retention_days_defaults_to_400_and_must_be_positive() -> None:
    assert config.load({}).usage.retention_days == 400
    assert config.load({"USAGE_RETENTION_DAYS": "30"}).usage.retention_days == 30
    with pytest.raises(ConfigError, match="USAGE_RETENTION_DAYS"):
        config.load({"USAGE_RETENTION_DAYS": "0"})

"""Fixtures for the backend contract: the fake Lunary and Helicone servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.helicone import FakeHelicone
from tests.fakes.lunary import FakeLunary


@pytest.fixture
async def fake_lunary() -> AsyncIterator[FakeLunary]:
    async with FakeLunary() as fake:
        yield fake


@pytest.fixture
async def fake_helicone() -> AsyncIterator[FakeHelicone]:
    async with FakeHelicone() as fake:
        yield fake

"""R2's list prices live once, in ``rules/pricing.py``, and every estimate prices through them."""

from __future__ import annotations

import pytest

from r2migrate.rules import pricing
from r2migrate.stages import inventory, verify


def test_prices_and_their_helpers():
    assert pricing.class_a_usd(1_000_000) == pytest.approx(4.50)
    assert pricing.class_b_usd(2_000_000) == pytest.approx(0.72)
    assert pricing.storage_usd_per_month(10 * 10**9) == pytest.approx(0.15)
    assert pricing.class_a_usd(0) == pricing.class_b_usd(0) == 0


def test_the_stages_use_the_one_price_list():
    assert inventory.CLASS_A_USD_PER_MILLION is pricing.CLASS_A_USD_PER_MILLION
    assert verify.CLASS_B_USD_PER_MILLION is pricing.CLASS_B_USD_PER_MILLION
    estimate = inventory.estimate_cost(files=1000, total_bytes=2 * 10**9)
    assert estimate.class_a_usd == pytest.approx(pricing.class_a_usd(1000))
    assert estimate.class_b_usd_verify == pytest.approx(pricing.class_b_usd(1000))
    assert estimate.storage_usd_per_month == pytest.approx(pricing.storage_usd_per_month(2e9))

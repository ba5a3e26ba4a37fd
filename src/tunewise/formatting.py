"""How amounts and counts are written everywhere (terminal, report.html, summaries): one money
formatter, one short-count formatter."""

from __future__ import annotations

SYMBOLS = {"INR": "₹", "USD": "$"}


def money(amount: float | None, currency: str) -> str:
    """``₹0.0128``, ``$9.67``, ``₹1,051``: three significant digits under 1, cents under 100,
    whole units above; ``unknown`` when there is no amount (an unpriced API model)."""
    if amount is None:
        return "unknown"
    sym = SYMBOLS.get(currency, f"{currency} ")
    if amount == 0:
        return f"{sym}0"
    if abs(amount) < 1:
        return f"{sym}{amount:.3g}"
    if abs(amount) < 100:
        return f"{sym}{amount:,.2f}"
    return f"{sym}{amount:,.0f}"


def short(count: float) -> str:
    """``1.5M``, ``30K``, ``700``: a volume such as queries per month, to three significant digits."""
    if count >= 1e6:
        return f"{count / 1e6:.3g}M"
    if count >= 1e3:
        return f"{count / 1e3:.3g}K"
    return f"{count:.0f}"

"""How amounts read to a person: money. One rule for the widget, the text progress
and the CLI; the Jupyter panel's ``formatUsd`` (labextension/src/format.ts) follows it
and a test holds the two to the same strings."""
from __future__ import annotations

SMALLEST_USD = 0.0001  # below this a cost reads "< $0.0001"


def format_usd(usd: float | None) -> str:
    """``$0``, ``< $0.0001``, ``$0.0002``, ``$0.0123``, ``$1.23``, ``$1,234.50``."""
    if usd is None:
        return "—"
    if usd <= 0:
        return "$0"
    if usd < SMALLEST_USD:
        return f"< ${SMALLEST_USD:.4f}"
    if usd < 1:
        # Four decimals, trailing zeros dropped (but keep two): $0.0002, $0.012, $0.50.
        text = f"{usd:.4f}".rstrip("0")
        whole, _, frac = text.partition(".")
        return f"${whole}.{frac.ljust(2, '0')}"
    return f"${usd:,.2f}"

"""Exact amounts: decimal strings in a token's units ↔ integer base units. Never floats."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from chalicelib.errors import InvalidRequest


def to_base_units(amount: str | Decimal, decimals: int) -> int:
    """"0.001" with 18 decimals → 10**15. More precision than the token has is an error,
    not a rounding."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation as exc:
        raise InvalidRequest(f"{amount!r} is not a decimal amount", reason="invalid_amount") from exc
    if not value.is_finite() or value < 0:
        raise InvalidRequest(f"{amount!r} is not a non-negative amount", reason="invalid_amount")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise InvalidRequest(f"{amount} has more than {decimals} decimal places",
                             reason="invalid_amount")
    return int(scaled)


def from_base_units(units: int, decimals: int) -> Decimal:
    return Decimal(units).scaleb(-decimals).normalize() if units else Decimal(0)

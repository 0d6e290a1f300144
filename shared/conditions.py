"""Conditions on a lead's fields (`field op value`), shared by scoring rules and routing rules.

A condition names a lead field or `attributes.<name>` and compares it with one of five operators; operands are
checked on write and evaluation is pure. Multi-valued fields (e.g. interests) match when any item does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Scalar = str | int | float | bool
Operator = Literal["equals", "in", "range", "contains", "exists"]
ATTRIBUTE_PREFIX = "attributes."


def is_attribute(field: str) -> bool:
    """True for `attributes.<name>`."""
    return field.startswith(ATTRIBUTE_PREFIX) and len(field) > len(ATTRIBUTE_PREFIX)


def operand_problem(op: Operator, value: Any, low: float | None, high: float | None) -> str | None:
    """Why the operands do not suit the operator, or None."""
    if op == "range":
        if low is None and high is None:
            return "range needs min and/or max"
        if low is not None and high is not None and low >= high:
            return f"range min {low} must be below max {high}"
        return None if value is None else "range takes min/max, not value"
    if low is not None or high is not None:
        return f"{op} takes value, not min/max"
    if op == "exists":
        return None if value is None else "exists takes no value"
    if op == "in":
        return None if isinstance(value, list) and value else "in needs a non-empty list as value"
    if value is None or isinstance(value, list):
        return f"{op} needs a single value"
    return None


def field_value(lead: Mapping[str, Any], field: str) -> Any:
    """A lead field, or an attribute for `attributes.<name>`; None when absent."""
    if field.startswith(ATTRIBUTE_PREFIX):
        return (lead.get("attributes") or {}).get(field[len(ATTRIBUTE_PREFIX) :])
    return lead.get(field)


def holds(op: Operator, value: Any, low: float | None, high: float | None, actual: Any) -> bool:
    """Whether `actual` (a field's value) satisfies the condition; an absent value satisfies nothing."""
    if actual is None or actual == "" or actual == [] or actual == ():
        return False
    if op == "exists":
        return True
    items = list(actual) if isinstance(actual, list | tuple) else [actual]
    if op == "range":
        return any(_in_range(item, low, high) for item in items)
    if op == "contains":
        needle = str(value).lower()
        return any(needle in str(item).lower() for item in items)
    wanted = value if isinstance(value, list) else [] if value is None else [value]
    return any(_same(item, option) for item in items for option in wanted)


def describe(field: str, op: Operator, value: Any, low: float | None, high: float | None) -> str:
    """The condition in words, for explanations."""
    if op == "exists":
        return f"{field} is given"
    if op == "range":
        return f"{field} in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'})"
    return f"{field} {op} {value}"


def _same(item: Any, option: Scalar) -> bool:
    if isinstance(option, bool):
        text = str(item).strip().lower()
        return text in ("true", "1", "yes", "on") if option else text in ("false", "0", "no", "off")
    if isinstance(option, int | float):
        try:
            return float(item) == float(option)
        except (TypeError, ValueError):
            return False
    return str(item).strip().lower() == str(option).strip().lower()


def _in_range(item: Any, low: float | None, high: float | None) -> bool:
    try:
        number = float(item)
    except (TypeError, ValueError):
        return False
    return (low is None or number >= low) and (high is None or number < high)

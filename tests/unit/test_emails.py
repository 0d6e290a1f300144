"""Email addresses (shared.emails) come out exactly as pydantic's EmailStr gives them back or refuses them."""

from __future__ import annotations

import random

import pytest
from pydantic import EmailStr, TypeAdapter, ValidationError

from shared.emails import EmailAddress

EMAIL_STR = TypeAdapter(EmailStr)
EMAIL_ADDRESS = TypeAdapter(EmailAddress)

EDGE_CASES = [
    "jane.doe@example.com", "Jane.Doe@Example.COM", "a@b.co", "a@b.c", "a@b", "a@localhost", "a@x.test",
    "a@sub.example.local", "a@example.onion", "a@arpa", "x@in-addr.arpa", "a@ex--ample.com", "a@xn--bcher-kva.com",
    "a@-example.com", "a@example-.com", "a@exa_mple.com", "a..b@example.com", ".a@example.com", "a.@example.com",
    "a+tag@example.com", "o'brien@example.ie", "a@example.123", "a@123.example.com", "a@example.c0m",
    "Jane <jane@example.com>", " jane@example.com ", "jane@example.com\n", "\"quoted\"@example.com",
    "jane@[192.168.0.1]", "jöhn@example.com", "john@exämple.com", "", "@example.com", "jane@", "jane",
    "a" * 64 + "@example.com", "a" * 65 + "@example.com", "a@" + "b" * 63 + ".com", "a@" + "b" * 64 + ".com",
    "a@" + ".".join(["b" * 60] * 4) + ".com", "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".com",
    "a@example.com.", "a@example..com", "a@EXAMPLE.INVALID", "user@mail.example.co.uk", "#!$%&'*+-/=?^_`{}|~@ex.org",
]  # fmt: skip


def outcome(adapter: TypeAdapter[str], value: str) -> tuple[str, str]:
    try:
        return "valid", adapter.validate_python(value)
    except ValidationError as exc:
        return "invalid", repr([(error["type"], error["msg"]) for error in exc.errors()])


@pytest.mark.parametrize("value", EDGE_CASES)
def test_an_address_comes_out_as_email_str_gives_it(value: str) -> None:
    assert outcome(EMAIL_ADDRESS, value) == outcome(EMAIL_STR, value)


def test_random_addresses_come_out_as_email_str_gives_them() -> None:
    chars = "abcXYZ019.-_+@'!#~ äé" + "." * 3
    draw = random.Random(20261130)
    for _ in range(5000):
        local = "".join(draw.choice(chars) for _ in range(draw.randint(0, 12)))
        labels = [
            "".join(draw.choice("abZ09-_ä") for _ in range(draw.randint(0, 8))) for _ in range(draw.randint(1, 4))
        ]
        value = f"{local}@{'.'.join(labels)}{draw.choice(['', '.com', '.IO', '.c', '.test', '.1a'])}"
        assert outcome(EMAIL_ADDRESS, value) == outcome(EMAIL_STR, value), value


def test_the_schema_is_email_str_s() -> None:
    assert EMAIL_ADDRESS.json_schema() == EMAIL_STR.json_schema()

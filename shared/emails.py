"""Email addresses as pydantic's EmailStr takes them, with a fast path for the plain ones.

EmailStr runs email-validator on every address: about 0.1 ms of CPU, most of it checking each character of the
domain for internationalised names, and a twelfth of intake's CPU per lead. Nearly every address a form posts is
plain ASCII (`jane.doe@example.com`). For those the outcome is known without it: email-validator accepts them and
gives them back with the domain in lower case. Anything else, or anything near a rule (special-use domains, labels
with `--`, lengths at the limits), still goes through EmailStr's own validation, errors and all.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic.networks import validate_email

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>(?:{_LABEL}\.)+[A-Za-z]{{2,63}})")
_SPECIAL_USE = ("arpa", "invalid", "local", "localhost", "onion", "test")  # email-validator refuses these


def normalized_email(value: str) -> str:
    """`value` as EmailStr would give it back, or the error EmailStr would raise."""
    plain = _PLAIN.fullmatch(value) if len(value) <= 200 else None
    if plain is not None and len(plain["local"]) <= 64 and "--" not in plain["domain"]:
        domain = plain["domain"].lower()
        if not any(domain == name or domain.endswith("." + name) for name in _SPECIAL_USE):
            return f"{plain['local']}@{domain}"
    return validate_email(value)[1]


EmailAddress = Annotated[str, AfterValidator(normalized_email), WithJsonSchema({"type": "string", "format": "email"})]

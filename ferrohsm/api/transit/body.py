"""Vault's request bodies: weakly typed members, unknown members ignored with a warning.

Vault's framework converts field types the way Go's mapstructure does ("256" is the int 256,
"true" the bool true) and answers members it does not know with the warning "Endpoint ignored
these unrecognized parameters"; FerroHSM does the same, so real Vault clients work unchanged.
What is refused, never ignored: a member Vault knows whose value asks for a feature FerroHSM
does not have (``unsupported``), so a client never gets a silently different result.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable
from typing import Any

from ...domain.errors import BadRequest
from ..handlers.common import refuse_duplicated

NOT_SUPPORTED = "not supported by FerroHSM"
LINE_BREAKS = str.maketrans("", "", "\r\n")
# zero in every spelling Vault's duration parser takes (Go's time.ParseDuration units, and d)
_ZERO_DURATION = re.compile(r"0+(?:\.0*)?|(?:0+(?:\.0*)?(?:ns|us|\u00b5s|ms|s|m|h|d))+")


def std_base64(value: str) -> bytes:
    """Standard base64 with padding as Vault decodes it (Go's ``base64.StdEncoding``), so what
    Vault takes is taken here: Go skips every '\r' and '\n' (base64 wrapped at 76 columns, a
    value read from a file with its trailing newline) and is otherwise strict, as this is: any
    other character outside the alphabet, or wrong padding, is ValueError (binascii.Error)."""
    try:
        return binascii.a2b_base64(value.translate(LINE_BREAKS).encode("ascii"),
                                   strict_mode=True)
    except UnicodeEncodeError:
        raise ValueError("not base64") from None


class Body:
    """One request body (or one ``batch_input`` item) and the members read from it."""

    def __init__(self, data: object, known: Iterable[str], what: str = "request body") -> None:
        if not isinstance(data, dict):
            raise BadRequest(f"{what} must be a JSON object")
        refuse_duplicated(data)
        self.data: dict[str, Any] = data
        self.known = frozenset(known)

    def warnings(self) -> list[str]:
        unknown = sorted(ascii(n[:40])[1:-1] for n in self.data if n not in self.known)[:10]
        if not unknown:
            return []
        return [f"Endpoint ignored these unrecognized parameters: [{' '.join(unknown)}]"]

    def raw(self, name: str) -> Any:
        return self.data.get(name)

    def text(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self._weak_int(name)
        if value is not None and (type(value) is not int or not low <= value <= high):
            raise BadRequest(f"{name} must be an integer from {low} to {high}")
        return value if value is None else int(value)

    def one_of(self, name: str, allowed: tuple[int, ...]) -> int | None:
        """An integer member with a few valid values (data key bits): the error names them,
        not a range that holds invalid ones."""
        value = self._weak_int(name)
        if value is not None and (type(value) is not int or value not in allowed):
            raise BadRequest(f"{name} must be one of {', '.join(map(str, allowed))}")
        return value if value is None else int(value)

    def _weak_int(self, name: str) -> object:
        """The member converted as Go's mapstructure does (256.0 and "256" are 256); None
        when absent or empty; any other value as it is, for the caller to refuse."""
        value = self.data.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 12:
            return int(value)
        return value

    def flag(self, name: str) -> bool:
        """A boolean as Vault's weak decoding reads one: true/false, "true"/"false", "1"/"0"
        and the numbers 1 and 0 (hvac users send ``prehashed: 1``). Any other value is refused
        rather than guessed (Go would read 2 as true)."""
        value = self.data.get(name)
        if value is None or value == "":
            return False
        if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
            return value.lower() in ("true", "1")
        if type(value) in (int, float) and value in (0, 1):
            return bool(value)
        if type(value) is not bool:
            raise BadRequest(f"{name} must be a boolean")
        return value

    def base64(self, name: str) -> bytes | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            return std_base64(value)
        except ValueError:
            raise BadRequest(f"{name} must be standard base64") from None

    def unsupported(self, *names: str, feature: str | None = None) -> None:
        """Refuse any of ``names`` given a value that asks for something (not null, "", false,
        0): FerroHSM does not have that feature."""
        for name in names:
            value = self.data.get(name)
            if value not in (None, "", False, 0, "false", "0"):
                raise BadRequest(f"{feature or name} is {NOT_SUPPORTED}")

    def unsupported_period(self, name: str, feature: str) -> None:
        """Refuse a duration member unless it is zero, which Vault reads as "disabled" whatever
        its spelling (0, "0", "0s", "0m", "0h", "0h0m0s", "0d"...): a client that spells
        Vault's default must not be refused for a feature it did not ask for."""
        value = self.data.get(name)
        if isinstance(value, str) and _ZERO_DURATION.fullmatch(value):
            return
        self.unsupported(name, feature=feature)

    def only(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        """A string member that must be one of ``allowed`` (Vault has more; FerroHSM these)."""
        value = self.text(name) or default
        if value not in allowed:
            raise BadRequest(f"{name} {value[:40]!a} is {NOT_SUPPORTED} "
                             f"(supported: {', '.join(allowed)})")
        return value

"""The one error type of the codec: which field, and why."""

from __future__ import annotations


class CodecError(ValueError):
    """A message that cannot be decoded or encoded.

    ``field`` is a path in RFC 7951 member names (``/scope[0]/lifetime``) or a CBOR key
    description; ``reason`` says what is wrong.  ``unknown_keys`` lists unknown
    comprehension-required CBOR keys (RFC 9132 §6: the 4.00 diagnostic names them).
    """

    def __init__(self, field: str, reason: str, unknown_keys: tuple[int, ...] = ()) -> None:
        self.field = field
        self.reason = reason
        self.unknown_keys = unknown_keys
        super().__init__(f"{field}: {reason}" if field else reason)

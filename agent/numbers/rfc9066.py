"""RFC 9066 (DOTS signal channel Call Home) constants.

CBOR keys 32768-32772 as go-dots uses them; 32773-32775 inferred from the TBA order
(see ``shared/spec/rfc9132-cbor-keys.md`` §8).  All are comprehension-optional.
RFC 9066 assigns no port: the service name is ``dots-call-home`` and the port is configured.
"""

from __future__ import annotations

import enum

MODULE = "ietf-dots-call-home"
REVISION = "2021-12-09"
SERVICE_NAME = "dots-call-home"
PATH_REDIRECT = "redirect"  # /.well-known/dots/redirect (§5.2.2)


class Key(enum.IntEnum):
    SOURCE_PREFIX = 32768
    SOURCE_PORT_RANGE = 32769
    SOURCE_ICMP_TYPE_RANGE = 32770
    LOWER_TYPE = 32771
    UPPER_TYPE = 32772
    ALT_CH_CLIENT = 32773
    ALT_CH_CLIENT_RECORD = 32774
    TTL = 32775


KEY_NAMES: dict[int, str] = {
    Key.SOURCE_PREFIX: "source-prefix",
    Key.SOURCE_PORT_RANGE: "source-port-range",
    Key.SOURCE_ICMP_TYPE_RANGE: "source-icmp-type-range",
    Key.LOWER_TYPE: "lower-type",
    Key.UPPER_TYPE: "upper-type",
    Key.ALT_CH_CLIENT: "alt-ch-client",
    Key.ALT_CH_CLIENT_RECORD: "alt-ch-client-record",
    Key.TTL: "ttl",
}

# Table 5 style shapes (reusing RFC 9132's Major).
from agent.numbers.rfc9132 import Major  # noqa: E402

KEY_MAJOR: dict[int, Major] = {
    Key.SOURCE_PREFIX: Major.ARRAY_OF_TSTR,
    Key.SOURCE_PORT_RANGE: Major.ARRAY_OF_MAPS,
    Key.SOURCE_ICMP_TYPE_RANGE: Major.ARRAY_OF_MAPS,
    Key.LOWER_TYPE: Major.UINT,
    Key.UPPER_TYPE: Major.UINT,
    Key.ALT_CH_CLIENT: Major.TSTR,
    Key.ALT_CH_CLIENT_RECORD: Major.ARRAY_OF_TSTR,
    Key.TTL: Major.UINT,
}

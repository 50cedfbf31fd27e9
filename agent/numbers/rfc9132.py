"""RFC 9132 (DOTS signal channel) constants: Table 5 CBOR keys, enums, URIs, defaults.

Sources: RFC 9132 (near-final text ``draft-ietf-dots-rfc8782-bis-08``) §3, §4, §6, §10;
``iana-dots-signal-channel@2021-09-02``.  Keys 34/35 and 41/42 follow Table 5
(34 = max-value, 35 = min-value, 41 = max-value-decimal, 42 = min-value-decimal),
as go-dots does; the IANA registry text lists them the other way round.
"""

from __future__ import annotations

import enum
from decimal import Decimal

# --- transport (§3, §10.1, §10.4, §10.5) -------------------------------------------
DEFAULT_PORT = 4646
SERVICE_NAME = "dots-signal"
CONTENT_FORMAT_DOTS_CBOR = 271  # application/dots+cbor
CBOR_TAG_DOTS = 271
MEDIA_TYPE = "application/dots+cbor"

# --- URIs (§4.2) ----------------------------------------------------------------------
WELL_KNOWN = (".well-known", "dots")
PATH_MITIGATE = "mitigate"
PATH_CONFIG = "config"
PATH_HEARTBEAT = "hb"
QUERY_CONTENT = "c"  # Table 2: c=c config, c=n non-config, c=a all
QUERY_CONTENT_VALUES = ("c", "n", "a")

# --- module names ------------------------------------------------------------------
MODULE = "ietf-dots-signal-channel"
IANA_MODULE = "iana-dots-signal-channel"
REVISION = "2021-09-02"


class Key(enum.IntEnum):
    """CBOR map keys of RFC 9132 Table 5."""

    MITIGATION_SCOPE = 1
    SCOPE = 2
    CDID = 3
    CUID = 4
    MID = 5
    TARGET_PREFIX = 6
    TARGET_PORT_RANGE = 7
    LOWER_PORT = 8
    UPPER_PORT = 9
    TARGET_PROTOCOL = 10
    TARGET_FQDN = 11
    TARGET_URI = 12
    ALIAS_NAME = 13
    LIFETIME = 14
    MITIGATION_START = 15
    STATUS = 16
    CONFLICT_INFORMATION = 17
    CONFLICT_STATUS = 18
    CONFLICT_CAUSE = 19
    RETRY_TIMER = 20
    CONFLICT_SCOPE = 21
    ACL_LIST = 22
    ACL_NAME = 23
    ACL_TYPE = 24
    BYTES_DROPPED = 25
    BPS_DROPPED = 26
    PKTS_DROPPED = 27
    PPS_DROPPED = 28
    ATTACK_STATUS = 29
    SIGNAL_CONFIG = 30
    SID = 31
    MITIGATING_CONFIG = 32
    HEARTBEAT_INTERVAL = 33
    MAX_VALUE = 34
    MIN_VALUE = 35
    CURRENT_VALUE = 36
    MISSING_HB_ALLOWED = 37
    MAX_RETRANSMIT = 38
    ACK_TIMEOUT = 39
    ACK_RANDOM_FACTOR = 40
    MAX_VALUE_DECIMAL = 41
    MIN_VALUE_DECIMAL = 42
    CURRENT_VALUE_DECIMAL = 43
    IDLE_CONFIG = 44
    TRIGGER_MITIGATION = 45
    REDIRECTED_SIGNAL = 46
    ALT_SERVER = 47
    ALT_SERVER_RECORD = 48
    HEARTBEAT = 49
    PROBING_RATE = 50
    PEER_HB_STATUS = 51


# Table 5 parameter names (YANG node names; top-level ones carry the module prefix in JSON).
KEY_NAMES: dict[int, str] = {
    Key.MITIGATION_SCOPE: "mitigation-scope",
    Key.SCOPE: "scope",
    Key.CDID: "cdid",
    Key.CUID: "cuid",
    Key.MID: "mid",
    Key.TARGET_PREFIX: "target-prefix",
    Key.TARGET_PORT_RANGE: "target-port-range",
    Key.LOWER_PORT: "lower-port",
    Key.UPPER_PORT: "upper-port",
    Key.TARGET_PROTOCOL: "target-protocol",
    Key.TARGET_FQDN: "target-fqdn",
    Key.TARGET_URI: "target-uri",
    Key.ALIAS_NAME: "alias-name",
    Key.LIFETIME: "lifetime",
    Key.MITIGATION_START: "mitigation-start",
    Key.STATUS: "status",
    Key.CONFLICT_INFORMATION: "conflict-information",
    Key.CONFLICT_STATUS: "conflict-status",
    Key.CONFLICT_CAUSE: "conflict-cause",
    Key.RETRY_TIMER: "retry-timer",
    Key.CONFLICT_SCOPE: "conflict-scope",
    Key.ACL_LIST: "acl-list",
    Key.ACL_NAME: "acl-name",
    Key.ACL_TYPE: "acl-type",
    Key.BYTES_DROPPED: "bytes-dropped",
    Key.BPS_DROPPED: "bps-dropped",
    Key.PKTS_DROPPED: "pkts-dropped",
    Key.PPS_DROPPED: "pps-dropped",
    Key.ATTACK_STATUS: "attack-status",
    Key.SIGNAL_CONFIG: "signal-config",
    Key.SID: "sid",
    Key.MITIGATING_CONFIG: "mitigating-config",
    Key.HEARTBEAT_INTERVAL: "heartbeat-interval",
    Key.MAX_VALUE: "max-value",
    Key.MIN_VALUE: "min-value",
    Key.CURRENT_VALUE: "current-value",
    Key.MISSING_HB_ALLOWED: "missing-hb-allowed",
    Key.MAX_RETRANSMIT: "max-retransmit",
    Key.ACK_TIMEOUT: "ack-timeout",
    Key.ACK_RANDOM_FACTOR: "ack-random-factor",
    Key.MAX_VALUE_DECIMAL: "max-value-decimal",
    Key.MIN_VALUE_DECIMAL: "min-value-decimal",
    Key.CURRENT_VALUE_DECIMAL: "current-value-decimal",
    Key.IDLE_CONFIG: "idle-config",
    Key.TRIGGER_MITIGATION: "trigger-mitigation",
    Key.REDIRECTED_SIGNAL: "redirected-signal",
    Key.ALT_SERVER: "alt-server",
    Key.ALT_SERVER_RECORD: "alt-server-record",
    Key.HEARTBEAT: "heartbeat",
    Key.PEER_HB_STATUS: "peer-hb-status",
    Key.PROBING_RATE: "probing-rate",
}

# Top-level message wrappers (§5.3 examples): CBOR key -> choice case of dots-signal.
MESSAGE_KEYS = (Key.MITIGATION_SCOPE, Key.SIGNAL_CONFIG, Key.REDIRECTED_SIGNAL, Key.HEARTBEAT)


def is_comprehension_required(key: int) -> bool:
    """§6 / §10.6.1.1: 1-127 and 256-16383 are comprehension-required, the rest optional."""
    return 1 <= key <= 127 or 256 <= key <= 16383


MIN_KEY, MAX_KEY = 1, 65535  # §10.6.1.1: key values are integers in 1-65535


# --- enumerations (iana-dots-signal-channel) -------------------------------------------
class Status(enum.IntEnum):
    ATTACK_MITIGATION_IN_PROGRESS = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2
    ATTACK_STOPPED = 3
    ATTACK_EXCEEDED_CAPABILITY = 4
    DOTS_CLIENT_WITHDRAWN_MITIGATION = 5
    ATTACK_MITIGATION_TERMINATED = 6
    ATTACK_MITIGATION_WITHDRAWN = 7
    ATTACK_MITIGATION_SIGNAL_LOSS = 8

    @property
    def yang(self) -> str:
        return self.name.lower().replace("_", "-")


class ConflictStatus(enum.IntEnum):
    REQUEST_INACTIVE_OTHER_ACTIVE = 1
    REQUEST_ACTIVE = 2
    ALL_REQUESTS_INACTIVE = 3

    @property
    def yang(self) -> str:
        return self.name.lower().replace("_", "-")


class ConflictCause(enum.IntEnum):
    OVERLAPPING_TARGETS = 1
    CONFLICT_WITH_ACCEPTLIST = 2
    CUID_COLLISION = 3
    REQUEST_REJECTED_LEGITIMATE_TRAFFIC = 4  # RFC 9066 §7.2

    @property
    def yang(self) -> str:
        return self.name.lower().replace("_", "-")


class AttackStatus(enum.IntEnum):
    UNDER_ATTACK = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2

    @property
    def yang(self) -> str:
        return self.name.lower().replace("_", "-")


# --- identifiers (§4.4.1.1, §4.5.2) ----------------------------------------------------------
CUID_LENGTH = 22  # base64url(SHA-256(SPKI)[:16]) without padding
MID_ROLLOVER = 3221225471  # 3/4 * (2**32 - 1)

# --- lifetimes (§4.4.1.1, §4.4.4) ---------------------------------------------------------
DEFAULT_LIFETIME = 3600
INDEFINITE_LIFETIME = -1
ACTIVE_BUT_TERMINATING = 120
ACTIVE_BUT_TERMINATING_MAX = 300
ATTACK_STOPPED_REPEAT = 4  # status 3 sent 4 times for trigger-mitigation=false, then 8

# --- session configuration (§4.5.2, Appendix C, YANG defaults) ---------------------------------
DEFAULT_HEARTBEAT_INTERVAL = 30
DEFAULT_MISSING_HB_ALLOWED = 15
DEFAULT_PROBING_RATE = 5
DEFAULT_MAX_RETRANSMIT = 3
DEFAULT_ACK_TIMEOUT = Decimal("2.00")
DEFAULT_ACK_RANDOM_FACTOR = Decimal("1.50")
MIN_HEARTBEAT_INTERVAL = 15  # RFC 8085 / Appendix C
MAX_HEARTBEAT_INTERVAL = 240
DEFAULT_CONFIG_MAX_AGE = 60  # §4.5.3: client default when Max-Age is absent

# Example acceptable ranges of Figure 20 (min, max), used as the server's default policy.
ACCEPTABLE_RANGES: dict[str, tuple[int | Decimal, int | Decimal]] = {
    "heartbeat-interval": (15, 240),
    "missing-hb-allowed": (3, 20),
    "probing-rate": (5, 20),
    "max-retransmit": (2, 15),
    "ack-timeout": (Decimal("1.00"), Decimal("30.00")),
    "ack-random-factor": (Decimal("1.10"), Decimal("4.00")),
}
CONFIG_DEFAULTS: dict[str, int | Decimal] = {
    "heartbeat-interval": DEFAULT_HEARTBEAT_INTERVAL,
    "missing-hb-allowed": DEFAULT_MISSING_HB_ALLOWED,
    "probing-rate": DEFAULT_PROBING_RATE,
    "max-retransmit": DEFAULT_MAX_RETRANSMIT,
    "ack-timeout": DEFAULT_ACK_TIMEOUT,
    "ack-random-factor": DEFAULT_ACK_RANDOM_FACTOR,
}

# --- pacing and reconnection (§4.4, §4.7) --------------------------------------------------
NON_INTERVAL_WITHOUT_RTT = 3.0  # at most one NON request every 3 s without an RTT estimate
RECONNECT_MIN_INTERVAL = 60.0  # MUST NOT retry more often
RECONNECT_RECOMMENDED_INTERVAL = 300.0  # SHOULD NOT retry more often
REDIRECT_LOOP_WINDOW = 300.0  # §4.6: ignore a redirect back to a server used within 5 minutes
HAPPY_EYEBALLS_DELAY = 0.100  # §4.3: Connection Attempt Delay during an attack
PROBE_MIN_INTERVAL = 300.0  # §4.3: probing the preferred path not more often than every 5 minutes

# --- temporary failures (RFC 7252 §5.9.3.4) ---------------------------------------------------
# A change the server could not store (disk full, I/O error) is answered 5.03 Service Unavailable
# with this Max-Age: "the number of seconds after which to retry".  Nothing was changed.
STORE_UNAVAILABLE_RETRY_AFTER = 30

# --- DTLS (§7.3) ----------------------------------------------------------------------------
DEFAULT_PMTU = 1280
DTLS12_RECORD_HEADER = 13


class Major(enum.Enum):
    """CBOR shapes of Table 5's "CBOR major type" column (element type for arrays)."""

    MAP = "map"
    ARRAY_OF_MAPS = "array of maps"
    ARRAY_OF_TSTR = "array of tstr"
    ARRAY_OF_UINT = "array of uint"
    TSTR = "tstr"
    UINT = "uint"
    UINT_OR_NEGINT = "uint or negint"  # lifetime: uint32 or -1
    BOOL = "bool"
    DECIMAL = "decimal fraction (tag 4)"
    ENUM = "uint enumeration"


# Table 5, column "CBOR major type".  Enumerations are uints on the wire, names in JSON.
KEY_MAJOR: dict[int, Major] = {
    Key.MITIGATION_SCOPE: Major.MAP, Key.SCOPE: Major.ARRAY_OF_MAPS, Key.CDID: Major.TSTR,
    Key.CUID: Major.TSTR, Key.MID: Major.UINT, Key.TARGET_PREFIX: Major.ARRAY_OF_TSTR,
    Key.TARGET_PORT_RANGE: Major.ARRAY_OF_MAPS, Key.LOWER_PORT: Major.UINT, Key.UPPER_PORT: Major.UINT,
    Key.TARGET_PROTOCOL: Major.ARRAY_OF_UINT, Key.TARGET_FQDN: Major.ARRAY_OF_TSTR,
    Key.TARGET_URI: Major.ARRAY_OF_TSTR, Key.ALIAS_NAME: Major.ARRAY_OF_TSTR,
    Key.LIFETIME: Major.UINT_OR_NEGINT, Key.MITIGATION_START: Major.UINT, Key.STATUS: Major.ENUM,
    Key.CONFLICT_INFORMATION: Major.MAP, Key.CONFLICT_STATUS: Major.ENUM, Key.CONFLICT_CAUSE: Major.ENUM,
    Key.RETRY_TIMER: Major.UINT, Key.CONFLICT_SCOPE: Major.MAP, Key.ACL_LIST: Major.ARRAY_OF_MAPS,
    Key.ACL_NAME: Major.TSTR, Key.ACL_TYPE: Major.TSTR, Key.BYTES_DROPPED: Major.UINT,
    Key.BPS_DROPPED: Major.UINT, Key.PKTS_DROPPED: Major.UINT, Key.PPS_DROPPED: Major.UINT,
    Key.ATTACK_STATUS: Major.ENUM, Key.SIGNAL_CONFIG: Major.MAP, Key.SID: Major.UINT,
    Key.MITIGATING_CONFIG: Major.MAP, Key.HEARTBEAT_INTERVAL: Major.MAP, Key.MAX_VALUE: Major.UINT,
    Key.MIN_VALUE: Major.UINT, Key.CURRENT_VALUE: Major.UINT, Key.MISSING_HB_ALLOWED: Major.MAP,
    Key.MAX_RETRANSMIT: Major.MAP, Key.ACK_TIMEOUT: Major.MAP, Key.ACK_RANDOM_FACTOR: Major.MAP,
    Key.MAX_VALUE_DECIMAL: Major.DECIMAL, Key.MIN_VALUE_DECIMAL: Major.DECIMAL,
    Key.CURRENT_VALUE_DECIMAL: Major.DECIMAL, Key.IDLE_CONFIG: Major.MAP, Key.TRIGGER_MITIGATION: Major.BOOL,
    Key.REDIRECTED_SIGNAL: Major.MAP, Key.ALT_SERVER: Major.TSTR, Key.ALT_SERVER_RECORD: Major.ARRAY_OF_TSTR,
    Key.HEARTBEAT: Major.MAP, Key.PROBING_RATE: Major.MAP, Key.PEER_HB_STATUS: Major.BOOL,
}

# Which enumeration each ENUM key carries.
KEY_ENUM: dict[int, type[enum.IntEnum]] = {
    Key.STATUS: Status, Key.CONFLICT_STATUS: ConflictStatus, Key.CONFLICT_CAUSE: ConflictCause,
    Key.ATTACK_STATUS: AttackStatus,
}

# Keys that identify a request and travel in Uri-Path options, never in a request body (§4.4.1.1, §4.5.2).
URI_ONLY_KEYS = (Key.CDID, Key.CUID, Key.SID)

"""DTLS engine shared by the server and client sides of the CoAP-over-DTLS transport.

Nothing in here knows about CoAP message semantics: a :class:`DTLSChannel` turns datagrams into
plaintext records and back, drives the handshake and its retransmission timer from the asyncio
loop, and reports the end of the association.  See :mod:`agent.transports.dtls` for the overview.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiocoap import error as coap_error
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi  # private: PSK and host checks pyOpenSSL does not wrap
from OpenSSL._util import lib as _lib

from .credentials import Credentials

log = logging.getLogger(__name__)

#: IPv6 (40) + UDP (8) header bytes: what a path MTU leaves for one DTLS datagram.
IP_UDP_OVERHEAD = 48
#: DTLS record header: type(1) version(2) epoch(2) sequence(6) length(2).
RECORD_HEADER = 13
CT_HANDSHAKE = 22
HT_CLIENT_HELLO = 1

DTLS1_2_VERSION = 0xFEFD

#: Certificate suites first; AEAD only.
CERT_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE-ECDSA-AES128-CCM8"
PSK_CIPHERS = b"ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-CCM8"


class DTLSError(coap_error.NetworkError):
    """Base of the errors a DTLS association reports to the CoAP layer.

    A ``NetworkError``, so aiocoap hands it to requesters unwrapped.
    """

    def __str__(self) -> str:
        detail = f": {self.args[0]}" if self.args else ""
        return f"DTLS error ({type(self).__name__}){detail}"


class CloseNotifyReceived(DTLSError):
    """The peer ended the DTLS association with close_notify."""


class FatalDTLSError(DTLSError):
    """The DTLS association failed (handshake failure, fatal alert, certificate rejected)."""


class IdleTimeout(DTLSError):
    """The association was closed locally for lack of activity."""


class TransportShutdown(DTLSError):
    """The association was closed because its transport shut down."""


# --------------------------------------------------------------------------- datagram helpers


#: Per-record expansion of the AEAD suites offered (8-byte explicit nonce + 16-byte tag).
AEAD_OVERHEAD = 24
#: Room left in a record for the CoAP header, token and options next to a block's payload.
COAP_HEADROOM = 64


def plaintext_limit(mtu: int) -> int:
    """Largest CoAP message that fits one DTLS record in one datagram within path MTU ``mtu``."""
    return mtu - IP_UDP_OVERHEAD - RECORD_HEADER - AEAD_OVERHEAD


def payload_size_for(mtu: int) -> int:
    """Largest payload aiocoap may send unsplit (its default is 1124) within path MTU ``mtu``."""
    return min(1124, plaintext_limit(mtu) - COAP_HEADROOM)


def block_size_exp_for(mtu: int) -> int:
    """Largest block-wise SZX (0..6) whose blocks fit in one datagram within path MTU ``mtu``."""
    limit = plaintext_limit(mtu) - COAP_HEADROOM
    exp = 6
    while exp > 0 and 2 ** (exp + 4) > limit:
        exp -= 1
    return exp



def split_records(data: bytes) -> list[bytes]:
    """Split a byte stream of DTLS records into whole records (a trailing partial one is dropped)."""
    records = []
    pos = 0
    while pos + RECORD_HEADER <= len(data):
        (length,) = struct.unpack_from("!H", data, pos + 11)
        end = pos + RECORD_HEADER + length
        if end > len(data):
            break
        records.append(data[pos:end])
        pos = end
    return records


def pack_datagrams(records: list[bytes], limit: int) -> list[bytes]:
    """Pack whole records greedily into datagrams of at most ``limit`` bytes.

    A memory BIO is a byte stream: the datagrams of a handshake flight come out of it joined
    together, so they are cut again at record boundaries.  A record longer than ``limit``
    (which OpenSSL does not produce once the MTU is set) is sent alone.
    """
    out: list[bytes] = []
    cur = b""
    for rec in records:
        if cur and len(cur) + len(rec) > limit:
            out.append(cur)
            cur = b""
        cur += rec
    if cur:
        out.append(cur)
    return out


def is_client_hello(data: bytes) -> bool:
    """True if ``data`` starts with an epoch-0 handshake record carrying a ClientHello."""
    return (len(data) > RECORD_HEADER and data[0] == CT_HANDSHAKE and data[1] == 0xFE
            and data[3:5] == b"\x00\x00" and data[RECORD_HEADER] == HT_CLIENT_HELLO)


# --------------------------------------------------------------------------- cookies


class CookieJar:
    """Stateless HelloVerifyRequest cookies: HMAC-SHA256(secret, period | peer address).

    OpenSSL's cookie callbacks do not see the peer address, so the caller stores it in the
    connection's app data (:class:`ConnInfo`) before calling ``DTLSv1_listen``; the callbacks
    run synchronously inside that call.  The secret is random per process; cookies are valid
    for the current and the previous ``period`` seconds.
    """

    _secret = os.urandom(32)

    def __init__(self, period: float = 60.0) -> None:
        self.period = period

    def _mac(self, addr: Any, slot: int) -> bytes:
        msg = f"{slot}|{addr[0]}|{addr[1]}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:16]

    def generate(self, conn: SSL.Connection) -> bytes:
        info: ConnInfo = conn.get_app_data()
        return self._mac(info.addr, int(time.monotonic() // self.period))

    def verify(self, conn: SSL.Connection, cookie: bytes) -> bool:
        info: ConnInfo = conn.get_app_data()
        slot = int(time.monotonic() // self.period)
        return any(hmac.compare_digest(cookie, self._mac(info.addr, s)) for s in (slot, slot - 1))


@dataclass
class ConnInfo:
    """Per-connection data reachable from OpenSSL callbacks (via ``Connection.get_app_data``)."""

    addr: Any = None
    psk_identity: bytes | None = None
    verify_error: tuple[int, int] | None = None  # (X509_V_ERR_*, depth) of the first failed check


# --------------------------------------------------------------------------- SSL contexts


def _psk_server_callback(table: dict[bytes, bytes]) -> Any:
    def cb(ssl: Any, identity: Any, psk: Any, max_len: int) -> int:
        try:
            ident = _ffi.string(identity) if identity != _ffi.NULL else b""
            key = table.get(ident)
            if key is None or len(key) > max_len:
                return 0
            psk[0:len(key)] = key
            conn = SSL.Connection._reverse_mapping.get(ssl)
            if conn is not None and isinstance(conn.get_app_data(), ConnInfo):
                conn.get_app_data().psk_identity = ident
            return len(key)
        except Exception:  # never let an exception cross the C boundary
            log.exception("PSK server callback failed")
            return 0

    return _ffi.callback("unsigned int (*)(SSL *, const char *, unsigned char *, unsigned int)", cb)


def _psk_client_callback(identity: bytes, key: bytes) -> Any:
    def cb(ssl: Any, hint: Any, ident_out: Any, max_ident: int, psk: Any, max_psk: int) -> int:
        if len(identity) + 1 > max_ident or len(key) > max_psk:
            return 0
        ident_out[0:len(identity) + 1] = identity + b"\0"
        psk[0:len(key)] = key
        conn = SSL.Connection._reverse_mapping.get(ssl)
        if conn is not None and isinstance(conn.get_app_data(), ConnInfo):
            conn.get_app_data().psk_identity = identity
        return len(key)

    return _ffi.callback("unsigned int (*)(SSL *, const char *, char *, unsigned int, unsigned char *,"
                         " unsigned int)", cb)


def _verify_cb(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    if not ok:
        info = conn.get_app_data()
        if isinstance(info, ConnInfo) and info.verify_error is None:
            info.verify_error = (errno, depth)
    return bool(ok)


def verify_failure(conn: SSL.Connection) -> str | None:
    """OpenSSL's reason for the peer certificate check that failed on *conn*, if one did."""
    info = conn.get_app_data()
    if not isinstance(info, ConnInfo) or info.verify_error is None:
        return None
    errno, depth = info.verify_error
    reason = _ffi.string(_lib.X509_verify_cert_error_string(errno)).decode(errors="replace")
    return f"{reason} (X509 error {errno} at depth {depth})"


def _describe_failure(conn: SSL.Connection, e: SSL.Error) -> str:
    detail = verify_failure(conn)
    return f"{_describe(e)}: {detail}" if detail else _describe(e)


def make_context(credentials: Credentials, *, server: bool, require_client_cert: bool = True,
                 cookies: CookieJar | None = None) -> tuple[SSL.Context, list[Any]]:
    """Build a DTLS 1.2+ ``SSL.Context``.  Returns it and the C callbacks that must be kept alive.

    Certificates are loaded when ``credentials.cert`` is set (a PSK-only client may leave it
    empty).  The peer's chain is verified against ``credentials.cafile``; a server with
    ``require_client_cert`` also refuses a certificate handshake without a client certificate
    (a PSK handshake needs none: the key authenticates the client).
    """
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_COMPRESSION | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
    # Idle associations give their record buffers back (tens of KB each): thousands of mostly
    # idle DOTS sessions (heartbeats only) must stay cheap.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    keep: list[Any] = []
    if credentials.cert:
        ctx.use_certificate_chain_file(str(credentials.cert))
        ctx.use_privatekey_file(str(credentials.key))
        ctx.check_privatekey()
    ctx.load_verify_locations(str(credentials.cafile))
    mode = SSL.VERIFY_PEER
    if server and require_client_cert:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    ctx.set_verify(mode, _verify_cb)
    ciphers = CERT_CIPHERS
    if credentials.psk:
        if server:
            cb = _psk_server_callback(dict(credentials.psk))
            _lib.SSL_CTX_set_psk_server_callback(ctx._context, cb)
            ciphers = CERT_CIPHERS + b":" + PSK_CIPHERS
        else:
            ident, key = next(iter(credentials.psk.items()))
            cb = _psk_client_callback(ident, key)
            _lib.SSL_CTX_set_psk_client_callback(ctx._context, cb)
            # the client states its preference: PSK when it has a key, certificates as fallback
            ciphers = PSK_CIPHERS + (b":" + CERT_CIPHERS if credentials.cert else b"")
        keep.append(cb)
    ctx.set_cipher_list(ciphers)
    if server:
        # a session id context is needed to resume sessions that carry a client certificate
        ctx.set_session_id(b"coaps-dtls")
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        if cookies is not None:
            ctx.set_cookie_generate_callback(cookies.generate)
            ctx.set_cookie_verify_callback(cookies.verify)
    else:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    return ctx, keep


def expect_peer_name(conn: SSL.Connection, name: str) -> None:
    """Make OpenSSL check the peer certificate's SAN against ``name`` (DNS name or IP literal)."""
    param = _lib.SSL_get0_param(conn._ssl)
    try:
        packed = ipaddress.ip_address(name.split("%", 1)[0]).packed
    except ValueError:
        raw = name.encode("idna")
        if _lib.X509_VERIFY_PARAM_set1_host(param, raw, len(raw)) != 1:
            raise ValueError(f"cannot set expected host name {name!r}") from None
        return
    if _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) != 1:
        raise ValueError(f"cannot set expected IP address {name!r}")


def session_reused(conn: SSL.Connection) -> bool:
    return bool(_lib.SSL_session_reused(conn._ssl))


# --------------------------------------------------------------------------- the channel


class DTLSChannel:
    """One DTLS association over memory BIOs.

    The owner feeds received datagrams to :meth:`feed`, writes plaintext with :meth:`write`
    and gets called back through ``on_plaintext``, ``on_established`` and ``on_closed``.
    Outgoing datagrams go to ``sendto``.  Retransmission timers run on ``loop``.
    """

    def __init__(self, conn: SSL.Connection, sendto: Callable[[bytes], None], *, mtu: int,
                 loop: asyncio.AbstractEventLoop, on_plaintext: Callable[[bytes], None],
                 on_established: Callable[[], None], on_closed: Callable[[Exception], None]) -> None:
        self.conn = conn
        self._sendto = sendto
        self.datagram_limit = mtu - IP_UDP_OVERHEAD
        conn.set_ciphertext_mtu(self.datagram_limit)
        self._loop = loop
        self._on_plaintext = on_plaintext
        self._on_established = on_established
        self._on_closed = on_closed
        self._timer: asyncio.TimerHandle | None = None
        self.established = False
        self.closed = False
        self.started = time.monotonic()
        self.last_rx = self.started  #: monotonic time of the last datagram received
        self.last_tx = self.started  #: monotonic time of the last plaintext written
        self.handshake_seconds: float | None = None

    @property
    def last_activity(self) -> float:
        return max(self.last_rx, self.last_tx)

    # -- input

    def start(self) -> None:
        """Start (client) or continue (server, after DTLSv1_listen) the handshake."""
        self._step()

    def feed(self, datagram: bytes) -> None:
        if self.closed:
            return
        self.last_rx = time.monotonic()
        try:
            self.conn.bio_write(datagram)
        except SSL.Error as e:
            self._fail(FatalDTLSError(f"BIO write failed: {e}"))
            return
        self._step()

    def _step(self) -> None:
        try:
            if not self.established:
                try:
                    self.conn.do_handshake()
                except SSL.WantReadError:
                    pass
                else:
                    self.established = True
                    self.handshake_seconds = time.monotonic() - self.started
                    self._flush()
                    self._on_established()
            if self.established:
                while not self.closed:
                    try:
                        data = self.conn.recv(65535)
                    except SSL.WantReadError:
                        break
                    self._on_plaintext(data)
        except SSL.ZeroReturnError:
            self._flush()
            self._fail(CloseNotifyReceived("peer sent close_notify"), send_close=True)
            return
        except SSL.Error as e:
            self._flush()  # send the alert, if OpenSSL produced one
            self._fail(FatalDTLSError(_describe_failure(self.conn, e)))
            return
        self._flush()
        self._rearm()

    # -- output

    def write(self, plaintext: bytes) -> None:
        if self.closed:
            raise FatalDTLSError("DTLS association is closed")
        self.last_tx = time.monotonic()
        try:
            self.conn.send(plaintext)
        except SSL.Error as e:
            self._flush()
            self._fail(FatalDTLSError(_describe_failure(self.conn, e)))
            raise FatalDTLSError(_describe_failure(self.conn, e)) from e
        self._flush()

    def _flush(self) -> None:
        chunks = []
        while True:
            try:
                chunk = self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return
        for dgram in pack_datagrams(split_records(b"".join(chunks)), self.datagram_limit):
            try:
                self._sendto(dgram)
            except OSError as e:  # e.g. socket closed underneath
                log.debug("DTLS send failed: %s", e)

    # -- timers

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # (after the handshake OpenSSL may still hold a timer for its last flight)
        timeout = self.conn.DTLSv1_get_timeout()
        if timeout is not None and not self.closed:
            self._timer = self._loop.call_later(max(timeout, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        try:
            self.conn.DTLSv1_handle_timeout()
        except SSL.Error as e:
            self._fail(FatalDTLSError(f"handshake timed out: {_describe(e)}"))
            return
        self._flush()
        self._rearm()

    # -- end

    def close(self, reason: Exception, *, notify: bool = True) -> None:
        """Close locally, sending close_notify when ``notify`` and the handshake completed."""
        if self.closed:
            return
        if notify and self.established:
            try:
                self.conn.shutdown()
            except SSL.Error:
                pass
            self._flush()
        self._fail(reason)

    def _fail(self, reason: Exception, *, send_close: bool = False) -> None:
        if self.closed:
            return
        if send_close:
            try:
                self.conn.shutdown()
            except SSL.Error:
                pass
            self._flush()
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_closed(reason)

    # -- peer identity

    def peer_cert_der(self) -> bytes | None:
        cert = self.conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        return cert.public_bytes(Encoding.DER)

    @property
    def plaintext_limit(self) -> int | None:
        try:
            return self.conn.get_cleartext_mtu()
        except Exception:
            return None


def _describe(e: SSL.Error) -> str:
    try:
        parts = [p[2] for p in e.args[0] if isinstance(p, tuple) and len(p) == 3]
    except (IndexError, TypeError):
        parts = []
    return "; ".join(str(p) for p in parts) or repr(e)

"""Tell a certificate problem from an unreachable server.

A (D)TLS attempt that fails because a certificate was refused is not a network problem, and
retrying will not help: the operator has to fix a file or a name.  :func:`certificate_problem`
looks through an attempt's exception chain for the two shapes such a failure takes here:

* our check of the server's certificate failed (``ssl.SSLCertVerificationError`` on TLS; the
  DTLS transport's "certificate verify failed: REASON (X509 error N ...)");
* the server refused ours (a TLS alert such as ``unknown ca``, ``certificate expired``,
  ``bad certificate`` or ``handshake failure`` after our certificate was sent).

and returns one line naming what is wrong, or None for any other failure.
"""

from __future__ import annotations

import re
import ssl

from aiocoap.error import NetworkError

# OpenSSL X509_V_ERR_* codes (openssl/x509_vfy.h) grouped by what the operator must fix.
UNKNOWN_ISSUER = {2, 18, 19, 20, 21}  # unable to get issuer / self-signed / local issuer unknown
EXPIRED, NOT_YET_VALID = 10, 9
NAME_MISMATCH = {62, 63, 64}  # hostname / email / IP address mismatch

_DTLS_VERIFY = re.compile(r"certificate verify failed: (?P<reason>.*?) \(X509 error (?P<code>\d+)")
_ALERTS = {
    "unknown ca": "the server does not trust our client certificate (unknown CA): it must be issued by "
                  "the CA the server uses for DOTS clients",
    "certificate expired": "the server refused our client certificate: it has expired",
    "bad certificate": "the server refused our client certificate (bad certificate)",
    "certificate unknown": "the server refused our client certificate (certificate unknown)",
    "certificate revoked": "the server refused our client certificate: it is revoked",
    "access denied": "the server refused our client certificate (access denied)",
}


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _explain(code: int, reason: str) -> str:
    if code in UNKNOWN_ISSUER:
        return f"the server's certificate is not issued by our CA ({reason})"
    if code == EXPIRED:
        return "the server's certificate has expired"
    if code == NOT_YET_VALID:
        return "the server's certificate is not valid yet (check the clocks)"
    if code in NAME_MISMATCH:
        return f"the server's certificate does not name the server we asked for ({reason})"
    return f"the server's certificate was refused: {reason}"


def certificate_problem(exc: BaseException) -> str | None:
    """One line about a refused certificate in *exc*'s chain, or None."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            reason = (e.verify_message or str(e)).rstrip(".")
            return _explain(e.verify_code, reason)
        text = str(e)
        m = _DTLS_VERIFY.search(text)
        if m:
            return _explain(int(m["code"]), m["reason"])
        lowered = text.lower().replace("_", " ")
        for alert, message in _ALERTS.items():
            if f"alert {alert}" in lowered:
                return message
    return None


def reset_hint(exc: BaseException) -> str | None:
    """A hint for a TLS connection the server reset: with TLS 1.3 the server checks our
    certificate after our side of the handshake is done, and its alert is often lost in the
    reset, so 'reset' is what a refused client certificate usually looks like."""
    for e in _chain(exc):
        if isinstance(e, ConnectionResetError):
            return "the server reset the connection (it may not accept our client certificate)"
        if isinstance(e, NetworkError) and (not e.args or str(e.args[0]) in ("None", "")):
            # aiocoap's connection_lost(None): a clean close before any answer
            return "the server closed the connection without answering (it may not accept our client certificate)"
    return None

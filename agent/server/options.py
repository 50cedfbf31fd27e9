"""CoAP options a DOTS request may carry (RFC 7252 §5.4.1, §5.10.2).

A request with a *critical* option (odd number) that this server does not recognise is answered
4.02 Bad Option with the option number in the diagnostic, before anything else looks at it;
unrecognised *elective* options (even numbers) are ignored.  Proxy-Uri / Proxy-Scheme are
recognised and answered 5.05 Proxying Not Supported (§5.10.2): a DOTS server is no proxy.

Q-Block1/Q-Block2 (RFC 9177) are not supported, so go-dots' probe (an empty GET with option 31)
gets 4.02 and the peer falls back to Block2.
"""

from __future__ import annotations

from aiocoap import Message
from aiocoap import numbers as coap
from aiocoap.numbers import OptionNumber

# The critical options the DOTS resources act on (or that aiocoap handles for them).
RECOGNISED_CRITICAL: frozenset[int] = frozenset({
    OptionNumber.IF_MATCH,  # efficacy updates (RFC 9132 §4.4.3)
    OptionNumber.URI_HOST, OptionNumber.URI_PORT,  # one host: accepted as sent
    OptionNumber.URI_PATH, OptionNumber.URI_QUERY,
    OptionNumber.ACCEPT,
    OptionNumber.BLOCK1, OptionNumber.BLOCK2,  # RFC 7959, reassembled by aiocoap
})
PROXY_OPTIONS: frozenset[int] = frozenset({OptionNumber.PROXY_URI, OptionNumber.PROXY_SCHEME})


def refuse_options(request: Message) -> tuple[coap.Code, str] | None:
    """(code, one-line diagnostic) when *request* carries an option this server must refuse."""
    numbers = sorted({int(o.number) for o in request.opt.option_list()})
    if any(n in PROXY_OPTIONS for n in numbers):
        return coap.PROXYING_NOT_SUPPORTED, "this DOTS server is not a proxy (Proxy-Uri/Proxy-Scheme)"
    unknown = [n for n in numbers if n % 2 == 1 and n not in RECOGNISED_CRITICAL]
    if unknown:
        return coap.BAD_OPTION, (f"unrecognised critical option(s) {', '.join(map(str, unknown))} "
                                 "(RFC 7252 §5.4.1; Q-Block, OSCORE and If-None-Match are not supported)")
    return None

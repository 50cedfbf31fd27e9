"""DOTS signal channel Call Home (RFC 9066).

The Call Home DOTS server (e.g. a CPE) opens the (D)TLS connection to the Call Home DOTS client
(the provider) and then serves it like a base DOTS server; the Call Home DOTS client signals
attacks *from* the server's domain (source-prefix, source-port-range, source-icmp-type-range)
and the CPE blocks them.

* :mod:`agent.callhome.server` -- CPE side: dialer (reconnect, resumption, heartbeats, redirect);
* :mod:`agent.callhome.service` -- CPE decisions: source scope, NAT44, consent, enforcement;
* :mod:`agent.callhome.resource` -- CPE CoAP resources (base + ``redirect``) and sessions;
* :mod:`agent.callhome.nat` -- NAT44 mapping (static mappings, conntrack);
* :mod:`agent.callhome.client` -- provider side: listener, peers, mitigation requests;
* :mod:`agent.callhome.control` -- local control socket of the long-running processes.
"""

"""CoAP transports of the signal channel: coaps+tcp (TLS) and coaps (DTLS), both with mutual X.509.

Transports know nothing of DOTS: they carry CoAP messages and expose the peer's
certificate (``identity.peer_certificate``) so that the DOTS layer can derive the cuid.
"""

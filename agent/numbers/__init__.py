"""Registry constants of the DOTS specifications, one module per RFC.

Nothing in here computes anything: these are the numbers the RFCs publish
(CBOR keys, enumerations, URIs, defaults), named after the spec.
"""

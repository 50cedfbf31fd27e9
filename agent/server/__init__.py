"""The DOTS server role (RFC 9132): ``DotsServer`` in ``app``; CoAP resources, service, sessions."""

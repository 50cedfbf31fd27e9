"""The DOTS mitigation web portal (RFC 8903 §3.1.5/§3.1.6); see :mod:`agent.portal.server`."""

from agent.portal.passwords import hash_password, verify_password
from agent.portal.server import Portal, User, load_users, run_portal

__all__ = ["Portal", "User", "hash_password", "load_users", "run_portal", "verify_password"]

"""Management plane of the DOTS agent: NETCONF/RESTCONF over libyang-validated datastores.

Embedding: create :class:`mgmt.manager.Management` on the agent's loop, wire the seams of
:mod:`mgmt.interfaces`, then ``await mgmt.start_netconf(NetconfSettings(...))`` and/or
``await mgmt.start_restconf(RestconfSettings(...))``.  Module map: ``yangctx`` (libyang
context, error records), ``tree`` (one data tree), ``edit`` (edit-config semantics),
``filters`` (subtree/XPath), ``datastore`` (running/candidate/startup, locks, commit),
``monitoring`` (capabilities, netconf-state), ``netconf_ops`` (RPC dispatch),
``netconf_server`` (SSH transport), ``restconf_server`` (HTTPS), ``auth`` (users, host key,
certificate-to-name), ``nacm`` (RFC 8341 rules, pure), ``nacm_data`` (the libyang side: diffs,
default-deny extensions, read filtering), ``access`` (the one enforcement point both protocols
call, with the audit log), ``limits`` (session caps and handshake timeouts of the listeners).
"""

from mgmt.auth import User, UserDB, hash_password
from mgmt.errors import MgmtError
from mgmt.interfaces import ConfigSubscriber, RpcHandler, SessionInfo, StateProvider
from mgmt.manager import Management

__all__ = ["ConfigSubscriber", "Management", "MgmtError", "RpcHandler", "SessionInfo", "StateProvider",
           "User", "UserDB", "hash_password"]

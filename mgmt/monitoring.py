"""Capabilities (hello) and ietf-netconf-monitoring state (RFC 6022) of the management plane.

Theory of operation: both are derived from the libyang context, so what the server advertises
is exactly what it validates against: one ``?module=&revision=&features=`` URI per module,
the base/ietf-netconf capabilities the datastore implements, and the ``netconf-state`` tree
(sessions, locks, schemas for ``<get-schema>``) built as RFC 7951 JSON and merged into
``<get>`` replies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mgmt.yangctx import YangContext

if TYPE_CHECKING:
    from mgmt.manager import Management

BASE_CAPABILITIES = (
    "urn:ietf:params:netconf:base:1.0",
    "urn:ietf:params:netconf:base:1.1",
    "urn:ietf:params:netconf:capability:writable-running:1.0",
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
    "urn:ietf:params:netconf:capability:validate:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:startup:1.0",
    "urn:ietf:params:netconf:capability:xpath:1.0",
    "urn:ietf:params:netconf:capability:notification:1.0",
    "urn:ietf:params:netconf:capability:interleave:1.0",
)
# ietf-netconf features we implement (url is not)
NC_IMPLEMENTED = {"writable-running", "candidate", "confirmed-commit", "rollback-on-error", "validate",
                  "startup", "xpath"}


def module_capabilities(yc: YangContext) -> list[str]:
    caps = []
    for m in yc.modules():
        if m.name in ("ietf-yang-library",):
            continue
        uri = f"{m.namespace}?module={m.name}"
        if m.revision:
            uri += f"&revision={m.revision}"
        features = [f for f in m.features if m.name != "ietf-netconf" or f in NC_IMPLEMENTED]
        if features:
            uri += "&features=" + ",".join(features)
        caps.append(uri)
    return caps


def capabilities(yc: YangContext) -> list[str]:
    """Every capability of the hello, base capabilities first."""
    caps = list(BASE_CAPABILITIES)
    caps += module_capabilities(yc)
    # RFC 7950 Section 5.6.4: YANG library announced in the hello
    for m in yc.modules():
        if m.name == "ietf-yang-library":
            content_id = "1"
            caps.append(f"urn:ietf:params:netconf:capability:yang-library:1.1?revision={m.revision}"
                        f"&content-id={content_id}")
    caps.append("urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring")
    return caps


def monitoring_state(mgmt: Management) -> dict[str, Any]:
    """ietf-netconf-monitoring:netconf-state as RFC 7951 JSON."""
    yc = mgmt.yc
    datastores = []
    for name in ("running", "candidate", "startup"):
        entry: dict[str, Any] = {"name": name}
        holder = mgmt.ds.locks.get(name)
        if holder:
            entry["locks"] = {"global-lock": {"locked-by-session": holder, "locked-time": mgmt.started}}
        datastores.append(entry)
    schemas = [{"identifier": m.name, "version": m.revision or "", "format": "yang",
                "namespace": m.namespace, "location": ["NETCONF"]}
               for m in yc.modules() if m.text is not None]
    sessions = [{"session-id": s.session_id,
                 "transport": "ietf-netconf-monitoring:netconf-ssh",
                 "username": s.username, "source-host": s.source_host or "127.0.0.1",
                 "login-time": s.login_time, **{k: v for k, v in s.counters.items()}}
                for s in mgmt.sessions.values() if s.transport == "netconf-ssh"]
    state: dict[str, Any] = {
        "capabilities": {"capability": capabilities(yc)},
        "datastores": {"datastore": datastores},
        "schemas": {"schema": schemas},
        "statistics": {"netconf-start-time": mgmt.started},
    }
    if sessions:
        state["sessions"] = {"session": sessions}
    return {"ietf-netconf-monitoring:netconf-state": state}


def schema_text(yc: YangContext, identifier: str, version: str | None) -> str | None:
    for m in yc.modules():
        if m.name == identifier and (not version or version == m.revision):
            return m.text
    return None

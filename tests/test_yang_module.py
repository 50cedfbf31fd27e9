"""Acceptance tests of our YANG module ``dots-agent`` (yang/dots-agent@2026-11-21.yang).

1. yanglint and ``pyang --strict`` accept the module without errors or warnings.
2. pyangbind compiles it together with derived copies of the standard modules
   (``sx:structure``/``sx:augment-structure`` rewritten, see shared/notes/libraries.md),
   and the generated classes build a server and a client-agent configuration.
3. The example instance documents in tests/data validate; invalid documents are rejected
   by libyang, each for the intended reason.
4. The leaves the module mirrors from RFC 9132 'scope' and the RFC 9066 attack-source
   augmentation stay identical (names, types, units, defaults) to the standard modules.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import yang

MODULE_NAME = "dots-agent"
MODULE = yang.MODULE_DIR / "dots-agent@2026-11-21.yang"
DATA = Path(__file__).resolve().parent / "data"
SERVER_EXAMPLE = DATA / "dots-agent-server-example.json"
CLIENT_EXAMPLE = DATA / "dots-agent-client-example.json"
INVALID_EXAMPLE = DATA / "dots-agent-invalid-example.json"

SIGNAL_CHANNEL = "ietf-dots-signal-channel@2021-09-02.yang"
CALL_HOME = "ietf-dots-call-home@2021-12-09.yang"
DATA_CHANNEL = "ietf-dots-data-channel@2020-05-28.yang"


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _search_args(flag: str = "-p") -> list[str]:
    args: list[str] = []
    for d in yang.search_path():
        args += [flag, str(d)]
    return args


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=yang.MODULE_DIR.parent, timeout=300)


def _yanglint_data(path: Path, data_type: str = "config", *extra: str) -> subprocess.CompletedProcess:
    return _run([_tool("yanglint"), *_search_args(), "-t", data_type, *extra, str(MODULE), str(path)])


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _root(doc: dict) -> dict:
    return doc["dots-agent:dots-agent"]


# --------------------------------------------------------------------------------------
# 1. The module compiles cleanly.
# --------------------------------------------------------------------------------------


def test_yanglint_accepts_module_without_warnings():
    result = _run([_tool("yanglint"), *_search_args(), str(MODULE)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@pytest.mark.parametrize("mode", ["--strict", "--lint"])
def test_pyang_accepts_module_without_warnings(mode):
    result = _run([_tool("pyang"), mode, *_search_args(), str(MODULE)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_module_does_not_depend_on_structure_extension():
    text = MODULE.read_text()
    assert not re.search(r"^\s*import\s+ietf-yang-structure-ext", text, re.MULTILINE)
    assert not re.search(r"^\s*sx:", text, re.MULTILINE)


def test_module_reuses_rfc9132_groupings():
    text = MODULE.read_text()
    for used in (
        "uses dots-signal:signal-config",
        "uses dots-signal:redirected-signal",
        "uses data-channel:target",
    ):
        assert used in text, used
    for typedef in (
        "iana-dots-signal:status",
        "iana-dots-signal:conflict-cause",
        "iana-dots-signal:attack-status",
    ):
        assert typedef in text, typedef


# --------------------------------------------------------------------------------------
# 3. Instance documents.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", [SERVER_EXAMPLE, CLIENT_EXAMPLE], ids=["server", "client"])
def test_example_documents_validate(example):
    result = _yanglint_data(example)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_invalid_example_is_rejected():
    result = _yanglint_data(INVALID_EXAMPLE)
    assert result.returncode != 0
    assert "ack-timeout: min-value-decimal must not exceed max-value-decimal" in result.stderr


def test_server_defaults_come_from_refined_rfc9132_grouping():
    """Server ranges/defaults are the RFC 9132 grouping leaves, defaults from RFC 9132 Figure 20."""
    result = _run(
        [
            _tool("yanglint"),
            *_search_args(),
            "-t",
            "config",
            "-f",
            "json",
            "-d",
            "all",
            str(MODULE),
            str(SERVER_EXAMPLE),
        ]
    )
    assert result.returncode == 0, result.stderr
    server = _root(json.loads(result.stdout))["server"]
    idle = server["session-config"]["idle-config"]
    assert idle["missing-hb-allowed"] == {"min-value": 3, "max-value": 20, "current-value": 15}
    assert idle["ack-random-factor"]["max-value-decimal"] in ("4.0", "4.00")
    assert idle["heartbeat-interval"]["current-value"] == 60  # configured in the example
    assert server["listen"]["endpoint"][0]["port"] == 4646  # SC-001 default port
    assert server["active-but-terminating"] == {"initial-period": 120, "max-period": 300}  # SC-106/SC-107


def _mutate(doc: dict, change) -> dict:
    doc = copy.deepcopy(doc)
    change(_root(doc))
    return doc


def _set(path: list, value):
    def change(root):
        node = root
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _del(path: list):
    def change(root):
        node = root
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


_CLIENT0 = ["server", "clients", "client", 0]
_REQ0 = ["client", "mitigation-request", 0]
_REQ1 = ["client", "mitigation-request", 1]

NEGATIVE_CASES = {
    # id: (base document, change, expected text in libyang's message)
    "bad-prefix": ("server", _set(_CLIENT0 + ["protected-prefix"], ["198.51.100.0/33"]), "198.51.100.0/33"),
    "current-below-min": (
        "server",
        _set(["server", "session-config", "idle-config", "heartbeat-interval", "current-value"], 5),
        "heartbeat-interval: current-value (the default offered to clients) must lie within",
    ),
    "abt-over-300": (
        "server",
        _set(["server", "active-but-terminating", "initial-period"], 301),
        "out of the allowed range",
    ),
    "abt-initial-over-max": (
        "server",
        _set(["server", "active-but-terminating"], {"initial-period": 200, "max-period": 150}),
        "initial-period must not exceed max-period",
    ),
    "redirect-without-alt-server": (
        "server",
        _set(["server", "redirect"], {"ttl": 60}),
        "Redirection needs 'alt-server'",
    ),
    "call-home-peer-without-port": (
        "server",
        _del(["call-home", "call-home-server", "peer", 0, "port"]),
        'Mandatory node "port"',
    ),
    "nftables-params-with-log-mitigator": (
        "server",
        _set(["server", "mitigator"], {"type": "log", "nftables": {"table-name": "x"}}),
        "When condition",
    ),
    "client-without-identity": (
        "server",
        lambda root: [root["server"]["clients"]["client"][0].pop(k) for k in ("cuid", "spki-sha256")],
        "An authorised client needs an identity",
    ),
    "unknown-credential": ("server", _set(["server", "credential"], "nope"), "Invalid leafref value"),
    "nat44-port-on-one-side": (
        "server",
        _del(["call-home", "call-home-server", "nat44", "static-mapping", 0, "external-port"]),
        "Ports must be given on both sides or neither",
    ),
    "state-data-in-config": (
        "server",
        _set(["server", "mitigations"], {"mitigation": [{"cuid": "a", "mid": 1}]}),
        "Unexpected data state node",
    ),
    "lifetime-zero": ("client", _set(_REQ0 + ["scope", "lifetime"], 0), "A lifetime of 0 is invalid"),
    "scope-without-target": (
        "client",
        _set(_REQ0 + ["scope"], {"lifetime": 60}),
        "A scope needs a target-prefix",
    ),
    "unknown-server": ("client", _set(_REQ0 + ["server"], "ghost"), "Invalid leafref value"),
    "client-sends-min-max": (
        "client",
        _set(["client", "session-config", "idle-config", "heartbeat-interval", "max-value"], 99),
        "min/max values are sent by the server only",
    ),
    "port-range-inverted": (
        "client",
        _set(_REQ0 + ["scope", "target-port-range", 1, "upper-port"], 1),
        "upper-port number must be greater",
    ),
    "call-home-request-without-target-prefix": (
        "client",
        _set(_REQ1 + ["scope", "attack-source"], {"source-prefix": ["192.168.1.20/32"]}),
        "A Call Home request needs 'target-prefix'",
    ),
    "alert-endpoint-without-token": (
        "client",
        _del(["client", "alert-endpoint", "token-file"]),
        "The alert endpoint needs a token",
    ),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE_CASES))
def test_invalid_configuration_is_rejected(case, tmp_path):
    base, change, expected = NEGATIVE_CASES[case]
    doc = _mutate(_load(SERVER_EXAMPLE if base == "server" else CLIENT_EXAMPLE), change)
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(doc))
    result = _yanglint_data(path)
    assert result.returncode != 0, f"{case} was accepted"
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize(
    "change",
    [
        _set(
            ["server", "redirect"],
            {"alt-server": "alt.example.net", "alt-server-record": ["192.0.2.9"], "ttl": 0},
        ),
        _set(["server", "lifetime", "allow-indefinite"], True),
    ],
    ids=["redirect", "indefinite"],
)
def test_valid_server_variants(change, tmp_path):
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(_mutate(_load(SERVER_EXAMPLE), change)))
    result = _yanglint_data(path)
    assert result.returncode == 0, result.stderr


def test_call_home_client_request_validates(tmp_path):
    doc = _mutate(
        _load(CLIENT_EXAMPLE),
        _set(
            _REQ0 + ["scope", "attack-source"],
            {
                "source-prefix": ["192.168.1.20/32"],
                "source-port-range": [{"lower-port": 554, "upper-port": 560}],
            },
        ),
    )
    path = tmp_path / "ch.json"
    path.write_text(json.dumps(doc))
    result = _yanglint_data(path)
    assert result.returncode == 0, result.stderr


OPERATIONAL_STATE = {
    "server": {
        "sessions": {
            "session": [
                {
                    "session-id": "s1",
                    "role": "server",
                    "peer-address": "198.51.100.7",
                    "peer-port": 53211,
                    "transport": "dtls",
                    "cuid": "dz6pHjaADkaFTbjr0JGBpw",
                    "active-config": "mitigating",
                    "negotiated-config": {
                        "mitigating-config": {"heartbeat-interval": {"current-value": 15}},
                        "idle-config": {"heartbeat-interval": {"current-value": 60}},
                    },
                    "heartbeat": {"status": "missing", "last-heard": "2026-11-21T10:00:00Z", "missed": 2},
                    "client-name": "customer-a",
                }
            ]
        },
        "mitigations": {
            "mitigation": [
                {
                    "cuid": "dz6pHjaADkaFTbjr0JGBpw",
                    "mid": 123,
                    "client-name": "customer-a",
                    "created": "2026-11-21T09:59:00Z",
                    "mitigator": "nftables",
                    "scope": {
                        "target-prefix": ["198.51.100.0/24"],
                        "lifetime": 3540,
                        "mitigation-start": "1795255140",
                        "status": "attack-mitigation-in-progress",
                        "conflict-information": {
                            "conflict-status": "request-inactive-other-active",
                            "conflict-cause": "overlapping-targets",
                            "conflict-scope": {"target-prefix": ["198.51.100.0/25"], "mid": 100},
                        },
                        "bytes-dropped": "1024",
                        "pps-dropped": "10",
                    },
                }
            ]
        },
        "statistics": {
            "mitigation-requests-received": "3",
            "rejected": [{"code": "4.22", "count": "1"}],
        },
    },
    "call-home": {
        "call-home-server": {
            "pending-approvals": {
                "pending-approval": [
                    {
                        "cuid": "isp-ch-client-cuid",
                        "mid": 7,
                        "peer": "isp-ch-client",
                        "scope": {
                            "target-prefix": ["203.0.113.99/32"],
                            "source-prefix": ["192.168.1.20/32"],
                            "lifetime": 600,
                        },
                    }
                ]
            }
        }
    },
}


def test_operational_state_validates(tmp_path):
    """State reuses the RFC 9132 scope leaves, including a conflict scope (which the RFC grouping
    itself cannot carry outside its sx:structure)."""
    doc = _load(SERVER_EXAMPLE)
    root = _root(doc)
    root["server"].update(OPERATIONAL_STATE["server"])
    root["call-home"]["call-home-server"].update(OPERATIONAL_STATE["call-home"]["call-home-server"])
    path = tmp_path / "operational.json"
    path.write_text(json.dumps(doc))
    result = _yanglint_data(path, "data")
    assert result.returncode == 0, result.stderr


def test_notification_validates(tmp_path):
    path = tmp_path / "notif.json"
    path.write_text(
        json.dumps(
            {
                "dots-agent:mitigation-status-change": {
                    "role": "server",
                    "cuid": "dz6pHjaADkaFTbjr0JGBpw",
                    "mid": 123,
                    "status": "attack-successfully-mitigated",
                    "previous-status": "attack-mitigation-in-progress",
                }
            }
        )
    )
    result = _yanglint_data(path, "notif")
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------
# 2. pyangbind compiles the module with derived copies of the standard modules.
# --------------------------------------------------------------------------------------


def _derive_standard_copies(dest: Path) -> None:
    """Copy the YANG directory, rewriting sx:structure / sx:augment-structure for pyangbind."""
    for src in yang.MODULE_DIR.glob("*.yang"):
        shutil.copy(src, dest / src.name)
    signal = dest / SIGNAL_CHANNEL
    text = signal.read_text()
    assert text.count("sx:structure dots-signal {") == 1
    signal.write_text(
        text.replace("sx:structure dots-signal {", "container dots-signal {\n    config false;")
    )
    call_home = dest / CALL_HOME
    call_home.write_text(call_home.read_text().replace("sx:augment-structure", "augment"))


@pytest.fixture(scope="module")
def binding(tmp_path_factory):
    pytest.importorskip("pyangbind")
    import pyangbind

    plugin_dir = Path(pyangbind.__file__).resolve().parent / "plugin"
    work = tmp_path_factory.mktemp("pyangbind")
    mods = work / "yang"
    mods.mkdir()
    _derive_standard_copies(mods)
    out = work / "dots_agent_binding.py"
    cmd = [
        _tool("pyang"),
        "--plugindir",
        str(plugin_dir),
        "-f",
        "pybind",
        "-p",
        str(mods),
        *_search_args()[2:],  # bundled standard modules only; our dir is replaced by the derived copies
        "-o",
        str(out),
        str(mods / MODULE.name),
        str(mods / SIGNAL_CHANNEL),
        str(mods / CALL_HOME),
        str(mods / DATA_CHANNEL),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert not errors, errors
    spec = importlib.util.spec_from_file_location("dots_agent_binding_under_test", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pyangbind_builds_server_and_client_config(binding, tmp_path):
    import pyangbind.lib.pybindJSON as pybindJSON

    assert hasattr(binding, "ietf_dots_signal_channel")  # compiled together with the standard module
    root = binding.dots_agent()
    agent = root.dots_agent

    cred = agent.credentials.credential.add("pki")
    cred.certificate_file = "/etc/dots-agent/agent.crt"
    cred.private_key_file = "/etc/dots-agent/agent.key"

    server = agent.server
    server.credential = "pki"
    endpoint = server.listen.endpoint.add("v6")
    endpoint.address = "2001:db8::1"
    client = server.clients.client.add("customer-a")
    client.cuid = "dz6pHjaADkaFTbjr0JGBpw"
    client.protected_prefix.append("198.51.100.0/24")
    with pytest.raises(ValueError):
        client.protected_prefix.append("198.51.100.0/33")

    peer = agent.client.server.add("primary")
    peer.address.append("192.0.2.1")
    peer.credential = "pki"
    request = agent.client.mitigation_request.add("web-farm")
    request.server = "primary"
    request.scope.target_prefix.append("198.51.100.0/24")
    request.scope.target_port_range.add(443)
    request.scope.lifetime = 3600

    text = pybindJSON.dumps(root, mode="ietf")
    doc = json.loads(text)
    assert _root(doc)["server"]["clients"]["client"][0]["protected-prefix"] == ["198.51.100.0/24"]
    assert _root(doc)["client"]["mitigation-request"][0]["scope"]["target-prefix"] == ["198.51.100.0/24"]

    # What pyangbind produces is what libyang accepts.
    path = tmp_path / "from-pyangbind.json"
    path.write_text(text)
    result = _yanglint_data(path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("example", [SERVER_EXAMPLE, CLIENT_EXAMPLE], ids=["server", "client"])
def test_pyangbind_round_trips_examples(binding, example):
    import pyangbind.lib.pybindJSON as pybindJSON

    loaded = pybindJSON.loads_ietf(example.read_text(), binding, "dots_agent")
    assert json.loads(pybindJSON.dumps(loaded, mode="ietf")) == _load(example)


# --------------------------------------------------------------------------------------
# 4. Mirrored leaves stay identical to RFC 9132 / RFC 9066.
# --------------------------------------------------------------------------------------

_BUILTIN_TYPES = {
    "binary", "bits", "boolean", "decimal64", "empty", "enumeration", "identityref", "instance-identifier",
    "int8", "int16", "int32", "int64", "leafref", "string", "uint8", "uint16", "uint32", "uint64", "union",
}  # fmt: skip


def _type_signature(type_stmt):
    """Comparable signature of a type: own-module typedefs are resolved, imported ones are named."""
    prefix, _, name = type_stmt.arg.rpartition(":")
    module = type_stmt.i_module
    if not prefix and name in _BUILTIN_TYPES:
        owner = None
    elif prefix:
        owner = module.i_prefixes[prefix][0]
    else:
        owner = module.arg
    if owner == MODULE_NAME:
        return _type_signature(type_stmt.i_typedef.search_one("type"))
    restrictions = tuple(
        (sub.keyword, sub.arg)
        for sub in type_stmt.substmts
        if sub.keyword in ("range", "length", "pattern", "fraction-digits")
    )
    members = tuple(_type_signature(sub) for sub in type_stmt.substmts if sub.keyword == "type")
    return (owner, name, restrictions, members)


def _units(leaf):
    units = leaf.search_one("units")
    if units is not None:
        return units.arg
    type_stmt = leaf.search_one("type")
    typedef = getattr(type_stmt, "i_typedef", None)
    if (
        typedef is not None
        and typedef.i_module.arg == MODULE_NAME
        and typedef.search_one("units") is not None
    ):
        return typedef.search_one("units").arg
    return None


def _flatten(stmt, prefix: str = "") -> dict:
    """Data nodes below stmt (uses expanded, choice/case transparent) -> signature."""
    out = {}
    for sub in stmt.substmts:
        if sub.keyword in ("leaf", "leaf-list"):
            default = sub.search_one("default")
            out[prefix + sub.arg] = (
                sub.keyword,
                _type_signature(sub.search_one("type")),
                _units(sub),
                default.arg if default is not None else None,
            )
        elif sub.keyword in ("container", "list"):
            key = sub.search_one("key")
            out[prefix + sub.arg] = (sub.keyword, key.arg if key is not None else None)
            out.update(_flatten(sub, prefix + sub.arg + "/"))
        elif sub.keyword in ("choice", "case"):
            out.update(_flatten(sub, prefix))
        elif sub.keyword == "uses":
            out.update(_flatten(sub.i_grouping, prefix))
    return out


@pytest.fixture(scope="module")
def pyang_modules():
    from pyang import context, repository

    repo = repository.FileRepository(os.pathsep.join(str(d) for d in yang.search_path()), use_env=False)
    ctx = context.Context(repo)
    modules = {
        name: ctx.search_module(None, name)
        for name in (MODULE_NAME, "ietf-dots-signal-channel", "ietf-dots-call-home", "iana-dots-signal-channel")
    }
    ctx.validate()
    assert all(modules.values()), modules
    return modules


def test_scope_mirror_matches_rfc9132(pyang_modules):
    rfc_scope = (
        pyang_modules["ietf-dots-signal-channel"]
        .search_one("grouping", "mitigation-scope")
        .search_one("list", "scope")
    )
    ours = pyang_modules[MODULE_NAME].search_one("grouping", "mitigation-scope-state")
    rfc, mine = _flatten(rfc_scope), _flatten(ours)
    omitted = {key for key in rfc if key.startswith("conflict-information/conflict-scope/acl-list")}
    assert omitted == {
        "conflict-information/conflict-scope/acl-list",
        "conflict-information/conflict-scope/acl-list/acl-name",
        "conflict-information/conflict-scope/acl-list/acl-type",
    }
    assert set(mine) == set(rfc) - omitted
    # RFC 9066 registered conflict-cause 4 after the iana-dots-signal-channel revision in yang/:
    # ours is that enumeration plus value 4 (typedef dots-agent:conflict-cause), nothing else differs.
    cause = "conflict-information/conflict-cause"
    for key in mine:
        if key != cause:
            assert mine[key] == rfc[key], key

    def enums(module, typedef):
        return [(e.arg, e.search_one("value").arg)
                for e in pyang_modules[module].search_one("typedef", typedef).search_one("type").search("enum")]

    assert enums(MODULE_NAME, "conflict-cause") == [
        *enums("iana-dots-signal-channel", "conflict-cause"), ("request-rejected-legitimate-traffic", "4")]


def test_request_scope_is_subset_of_rfc9132(pyang_modules):
    rfc_scope = (
        pyang_modules["ietf-dots-signal-channel"]
        .search_one("grouping", "mitigation-scope")
        .search_one("list", "scope")
    )
    rfc = _flatten(rfc_scope)
    mine = _flatten(pyang_modules[MODULE_NAME].search_one("grouping", "request-scope"))
    assert set(mine) <= set(rfc)
    for key in mine:
        assert mine[key] == rfc[key], key


def test_attack_source_mirror_matches_rfc9066(pyang_modules):
    augments = [
        stmt
        for stmt in pyang_modules["ietf-dots-call-home"].substmts
        if stmt.keyword == ("ietf-yang-structure-ext", "augment-structure")
        and stmt.arg.endswith("/dots-signal:scope")
    ]
    assert len(augments) == 1
    rfc = _flatten(augments[0])
    mine = _flatten(pyang_modules[MODULE_NAME].search_one("grouping", "call-home-attack-source"))
    assert mine == rfc

"""Drive a ``dots client agent`` through NETCONF: configure, show or delete a mitigation request.

    python docs/examples/agent_request.py --port 20831 --password-file netconf.pw set web 203.0.113.0/24
    python docs/examples/agent_request.py --port 20831 --password-file netconf.pw show
    python docs/examples/agent_request.py --port 20831 --password-file netconf.pw delete web
"""

import argparse

from lxml import etree
from ncclient import manager

NS = "urn:dots-agent:params:xml:ns:yang:dots-agent"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=830)
p.add_argument("--user", default="operator")
p.add_argument("--password-file", required=True)
p.add_argument("op", choices=("set", "show", "delete"))
p.add_argument("name", nargs="?")
p.add_argument("prefix", nargs="*")
args = p.parse_args()

password = open(args.password_file).readline().strip()
with manager.connect(host=args.host, port=args.port, username=args.user, password=password,
                     hostkey_verify=False, allow_agent=False, look_for_keys=False) as m:
    if args.op == "set":  # the agent signals the request as soon as running changes
        prefixes = "".join(f"<target-prefix>{x}</target-prefix>" for x in args.prefix)
        m.edit_config(target="running", config=(
            f'<config><dots-agent xmlns="{NS}"><client><mitigation-request><name>{args.name}</name>'
            f"<scope>{prefixes}<lifetime>3600</lifetime></scope></mitigation-request></client></dots-agent></config>"))
    elif args.op == "delete":  # ... and withdraws it when the entry goes
        m.edit_config(target="running", config=(
            f'<config xmlns:nc="{NC}"><dots-agent xmlns="{NS}"><client><mitigation-request nc:operation="delete">'
            f"<name>{args.name}</name></mitigation-request></client></dots-agent></config>"))
    else:  # configuration and state (mid, status reported by the server) of every request
        reply = m.get(filter=("subtree", f'<dots-agent xmlns="{NS}"><client><mitigation-request/></client>'
                                         "</dots-agent>"))
        print(etree.tostring(etree.fromstring(reply.data_xml.encode()), pretty_print=True).decode())

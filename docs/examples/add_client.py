"""Authorise a DOTS client on a running ``dots server`` through NETCONF (ncclient).

    python docs/examples/add_client.py --port 20830 --password-file netconf.pw NAME CUID PREFIX...

Also sets allow-unlisted to false: from then on only configured clients are served.
"""

import argparse

from ncclient import manager

NS = "urn:dots-agent:params:xml:ns:yang:dots-agent"

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=830)
p.add_argument("--user", default="operator")
p.add_argument("--password-file", required=True)
p.add_argument("name")
p.add_argument("cuid")
p.add_argument("prefix", nargs="+")
args = p.parse_args()

prefixes = "".join(f"<protected-prefix>{x}</protected-prefix>" for x in args.prefix)
config = (f'<config><dots-agent xmlns="{NS}"><server><clients><allow-unlisted>false</allow-unlisted>'
          f"<client><name>{args.name}</name><cuid>{args.cuid}</cuid>{prefixes}</client>"
          "</clients></server></dots-agent></config>")
password = open(args.password_file).readline().strip()
with manager.connect(host=args.host, port=args.port, username=args.user, password=password,
                     hostkey_verify=False, allow_agent=False, look_for_keys=False) as m:
    m.edit_config(target="running", config=config)  # validated and applied at once, no restart
    print(f"{args.name} ({args.cuid}) authorised for {', '.join(args.prefix)}")

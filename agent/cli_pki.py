"""``dots pki init DIR``, ``dots pki client DIR NAME`` and ``dots pki mgmt-client DIR NAME``:
development certificates (DOTS CA and, apart from it, the management CA of RESTCONF)."""

from __future__ import annotations

import argparse
import sys

from agent import pki


def init(args: argparse.Namespace) -> int:
    paths = pki.init_pki(args.dir, tuple(args.san) if args.san else pki.SERVER_SANS, force=args.force)
    print(f"CA          {paths.ca_cert}")
    print(f"server      {paths.server_cert} {paths.server_key}")
    cuid = pki.certificate_cuid(paths.client_cert)
    print(f"client      {paths.client_cert} {paths.client_key}  cuid={cuid}")
    print(f"mgmt CA     {paths.mgmt_ca_cert}")
    print(f"admin       {paths.admin_cert} {paths.admin_key}  "
          f"fingerprint={pki.certificate_fingerprint(paths.admin_cert)}")
    return 0


def client(args: argparse.Namespace) -> int:
    crt, key = pki.issue_client(args.dir, args.name)
    print(f"{args.name:<11} {crt} {key}  cuid={pki.certificate_cuid(crt)}")
    return 0


def mgmt_client(args: argparse.Namespace) -> int:
    crt, key = pki.issue_mgmt_client(args.dir, args.name)
    print(f"{args.name:<11} {crt} {key}  fingerprint={pki.certificate_fingerprint(crt)}")
    return 0


def renew(args: argparse.Namespace) -> int:
    try:
        crt = pki.renew(args.dir, args.name)
    except (OSError, ValueError) as exc:
        print(f"dots pki renew: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name:<11} {crt} renewed for the same key  cuid={pki.certificate_cuid(crt)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pki", help="development PKI (ECDSA P-256)")
    psub = p.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    q = psub.add_parser("init", help="write ca.crt, server.crt/.key, client.crt/.key and the management "
                        "CA mgmt-ca.crt with admin.crt/.key (RESTCONF administrator) into DIR")
    q.add_argument("dir")
    q.add_argument("--san", action="append", help="server subjectAltName (repeat); default localhost, "
                   "127.0.0.1, ::1")
    q.add_argument("--force", action="store_true", help="replace existing files")
    q.set_defaults(handler=init)
    q = psub.add_parser("client", help="issue one more client certificate NAME.crt/.key in DIR")
    q.add_argument("dir")
    q.add_argument("name")
    q.set_defaults(handler=client)
    q = psub.add_parser("mgmt-client", help="issue a RESTCONF client certificate NAME.crt/.key from the "
                        "management CA (map it with /dots-agent/management/cert-to-name)")
    q.add_argument("dir")
    q.add_argument("name")
    q.set_defaults(handler=mgmt_client)
    q = psub.add_parser("renew", help="re-issue NAME.crt for its existing key NAME.key (same cuid), "
                        "from the CA that issued it")
    q.add_argument("dir")
    q.add_argument("name")
    q.set_defaults(handler=renew)

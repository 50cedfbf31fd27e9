#!/usr/bin/env bash
# Install everything the agent and its tests need on a fresh Debian 12 machine (run as root or
# with sudo available): Debian packages, then a virtualenv in .venv with the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libyang2-dev libyang2-tools   # libyang for validation (the Python binding builds against it), yanglint
  libcoap3-bin                  # coap-client-openssl: an independent CoAP peer for interop tests
  nftables iproute2 conntrack   # the nftables mitigator, namespace tests, Call Home NAT44 lookups
  gcc libffi-dev pkg-config     # building the libyang CFFI binding
  openssh-client                # NETCONF over SSH tests
  gobgpd                        # BGP speaker of the Flowspec/RTBH mitigators (and the test's peer router)
  chromium chromium-driver      # headless browser test of the web portal (system driver, no downloads)
  curl jq                       # independent HTTP peer in tests; the walkthroughs' commands
)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Wait (up to 10 min) for another apt/dpkg run, e.g. unattended-upgrades, instead of failing on its lock.
APT=(apt-get -o DPkg::Lock::Timeout=600)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO "${APT[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive $SUDO "${APT[@]}" install -y -qq python3-venv python3-dev >/dev/null
    rm -rf .venv && "$PY" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

#!/bin/sh
# A detector's hook: "detector_hook.sh start PREFIX" asks for mitigation, "detector_hook.sh stop PREFIX"
# withdraws it.  The mid of each prefix is kept in $DOTS_HOOK_DIR/<prefix>.mid.
# Exit codes of `dots client`: 0 success, 1 DOTS error (4.xx/5.xx), 2 usage, 3 server unreachable.
PKI=${DOTS_PKI:-pki/}
SERVER=${DOTS_SERVER:-localhost:4646}
DIR=${DOTS_HOOK_DIR:-hook-state}
mkdir -p "$DIR"
midfile="$DIR/$(echo "$2" | tr / _).mid"
dots="dots client --pki $PKI --server $SERVER --state $DIR/client.json --json"

case "$1" in
start)
    out=$($dots mitigate --target-prefix "$2" --lifetime 3600 2>/dev/null)
    rc=$?
    case $rc in
    0) echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mid"])' > "$midfile"
       echo "mitigation requested for $2 (mid $(cat "$midfile"))" ;;
    1) echo "DOTS server refused: $out" >&2 ;;
    3) echo "DOTS server unreachable: $out" >&2 ;;
    esac
    exit $rc ;;
stop)
    [ -f "$midfile" ] || { echo "no request for $2" >&2; exit 2; }
    $dots withdraw --mid "$(cat "$midfile")" >/dev/null 2>&1 && rm -f "$midfile" && echo "withdrawn $2" ;;
*)
    echo "usage: $0 start|stop PREFIX" >&2; exit 2 ;;
esac

"""Print what a DOTS server's third-party notification sends: webhook POSTs and syslog datagrams.

    python docs/examples/event_sink.py 28080 20514     # HTTP on 127.0.0.1:28080, syslog/UDP on :20514
"""

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print("webhook:", body.decode(), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def syslog(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    while True:
        print("syslog: ", s.recv(65535).decode(errors="replace"), flush=True)


threading.Thread(target=syslog, args=(int(sys.argv[2]),), daemon=True).start()
HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()

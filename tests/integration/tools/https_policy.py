#!/usr/bin/python3
"""An HTTPS server for MTA-STS policy files (RFC 8461 §3.3): serves
/.well-known/mta-sts.txt from a file that the test may rewrite at any time.

  https_policy.py --listen HOST:PORT --cert PEM --key PEM --policy FILE --ready FILE
                  [--log FILE] [--type MEDIA-TYPE] [--redirect URL]

  --policy FILE   the body of /.well-known/mta-sts.txt (read on every request)
  --type          the Content-Type sent (default text/plain)
  --redirect URL  answer 301 with this Location instead
  --log FILE      one line per request: "GET PATH HOST"
  --ready FILE    receives the bound port once listening
Any other path is 404.
"""

import argparse
import http.server
import os
import ssl
import sys

p = argparse.ArgumentParser()
p.add_argument("--listen", required=True)
p.add_argument("--cert", required=True)
p.add_argument("--key", required=True)
p.add_argument("--policy", required=True)
p.add_argument("--ready", required=True)
p.add_argument("--log")
p.add_argument("--type", default="text/plain")
p.add_argument("--redirect")
a = p.parse_args()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        if a.log:
            with open(a.log, "a") as f:
                f.write("GET %s %s\n" % (self.path, self.headers.get("Host", "")))
        if self.path != "/.well-known/mta-sts.txt":
            body = b"not found\n"
            self.send_response(404)
        elif a.redirect:
            body = b""
            self.send_response(301)
            self.send_header("Location", a.redirect)
        else:
            with open(a.policy, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", a.type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


host, port = a.listen.rsplit(":", 1)
host = host.strip("[]")


class Server(http.server.HTTPServer):
    address_family = __import__("socket").AF_INET6 if ":" in host else __import__("socket").AF_INET


srv = Server((host, int(port)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(a.cert, a.key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(a.ready + ".tmp", "w") as f:
    f.write("%d\n" % srv.server_address[1])
os.rename(a.ready + ".tmp", a.ready)
try:
    srv.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)

"""Trellis sandbox test app: HTTP on --http-port, TCP echo on --echo-port, both on --host.

GET <path> answers 200 with "<name> got <path> from <client ip>" (the path comes back in the
body, so a marker sent in the request is also in the response). Every request is logged to
stdout. Standard library only; stops on SIGTERM.
"""
import argparse
import http.server
import socketserver
import sys
import threading

NAME = "app"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"{NAME} got {self.path} from {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.client_address[0], fmt % args))
        sys.stdout.flush()


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    global NAME
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="app")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--echo-port", type=int, default=9090)
    p.add_argument("--host", default="0.0.0.0", help="address both servers bind (127.0.0.1: pod-private)")
    a = p.parse_args()
    NAME = a.name
    echo = EchoServer((a.host, a.echo_port), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    web = http.server.ThreadingHTTPServer((a.host, a.http_port), Handler)
    print(f"{NAME} listening on {a.host}: http {a.http_port}, echo {a.echo_port}", flush=True)
    web.serve_forever()


if __name__ == "__main__":
    main()

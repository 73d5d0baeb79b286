"""Trellis sandbox test app: HTTP on --http-port, TCP echo on --echo-port.

GET <path> answers 200 with "<name> got <path> from <client ip>" (the path comes back in the
body, so a marker sent in the request is also in the response). Every request is logged to
stdout. Standard library only.

On SIGTERM it stops the way a well-behaved app in a deleted pod does: it keeps accepting for
--linger seconds (the time the endpoint's removal takes to reach the callers; in Kubernetes the
two happen at once, hence the usual preStop sleep), then new connections are refused (the
listening sockets are shut down), requests in progress are answered (for at most --grace
seconds), and it exits. Closing the listener sooner resets the connections waiting in its
accept queue, which no proxy can retry once the caller has sent its request.
"""
import argparse
import http.server
import signal
import socket
import socketserver
import sys
import threading
import time

NAME = "app"
# HTTP connections being served now (SIGTERM waits for them).
OPEN = 0
OPEN_LOCK = threading.Lock()


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


class Web(http.server.ThreadingHTTPServer):
    """Counts the connections it serves: from accept (in the serving loop, so none is missed
    when the loop stops) to the end of its thread."""

    def process_request(self, request, client_address):
        global OPEN
        with OPEN_LOCK:
            OPEN += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        global OPEN
        try:
            super().shutdown_request(request)
        finally:
            with OPEN_LOCK:
                OPEN -= 1


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
    p.add_argument("--grace", type=float, default=5)
    p.add_argument("--linger", type=float, default=0.5)
    a = p.parse_args()
    NAME = a.name
    echo = EchoServer(("0.0.0.0", a.echo_port), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    web = Web(("0.0.0.0", a.http_port), Handler)

    def close():
        time.sleep(a.linger)
        for server in (web, echo):
            try:
                # On a listening socket: no new connection is accepted, or queued, from now on.
                server.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        web.shutdown()

    def stop(signum, frame):
        threading.Thread(target=close, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"{NAME} listening: http {a.http_port}, echo {a.echo_port}", flush=True)
    web.serve_forever()
    deadline = time.monotonic() + a.grace
    while OPEN > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"{NAME} stopped ({OPEN} connections cut)", flush=True)


if __name__ == "__main__":
    main()

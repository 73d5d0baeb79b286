"""Test client of the end-to-end suite, run inside a pod as an ordinary user; prints one JSON
object on stdout. Standard library only. Every loop is bounded in count and in time.

  many  URL COUNT             COUNT concurrent GETs of URL/many-<i>
  plain HOST PORT MARKER      one raw HTTP request over plain TCP; what came back
  load  HOST HTTP ECHO SECS   one long-lived echo connection (a line every --interval) and new
                              HTTP connections one after another, for SECS seconds
  calls URL COUNT SECS        COUNT new connections (GET URL/call-<i>), --concurrency at a time,
                              for at most SECS seconds: which app answered each (the first word
                              of the body: the test app's name), in the order they started
"""
import argparse
import json
import socket
import threading
import time
import urllib.request

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url, timeout):
    with OPENER.open(url, timeout=timeout) as r:
        return r.status, r.read().decode(errors="replace")


def describe(e):
    return f"{type(e).__name__}: {e}"


def cmd_many(a):
    results = [None] * a.count

    def one(i):
        try:
            status, body = get(f"{a.url}/many-{i}", a.timeout)
            results[i] = {"ok": status == 200 and f"/many-{i}" in body, "status": status}
        except Exception as e:
            results[i] = {"ok": False, "error": describe(e)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(a.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.timeout + 5)
    ok = sum(1 for r in results if r and r["ok"])
    print(json.dumps({"ok": ok, "results": results}))


def cmd_plain(a):
    out = {"connected": False, "received": "", "error": None}
    try:
        s = socket.create_connection((a.host, a.port), timeout=a.timeout)
        out["connected"] = True
        request = f"GET /{a.marker} HTTP/1.1\r\nHost: {a.host}\r\nConnection: close\r\n\r\n"
        s.sendall(request.encode())
        data = b""
        while len(data) < 1 << 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out["received"] = data.decode(errors="replace")
    except Exception as e:
        out["error"] = describe(e)
    print(json.dumps(out))


def cmd_load(a):
    stop = time.monotonic() + a.seconds
    long = {"exchanges": 0, "failures": 0, "errors": []}
    new = {"ok": 0, "failures": 0, "errors": []}

    def long_lived():
        try:
            s = socket.create_connection((a.host, a.echo_port), timeout=5)
            s.settimeout(5)
        except Exception as e:
            long["failures"] += 1
            long["errors"].append(f"connect: {describe(e)}")
            return
        i = 0
        while time.monotonic() < stop and i < 100000:
            msg = f"ping {i:06d}\n".encode()
            try:
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        raise ConnectionError("closed by the other end")
                    got += chunk
                if got != msg:
                    raise ValueError(f"echo {got!r} for {msg!r}")
                long["exchanges"] += 1
            except Exception as e:
                long["failures"] += 1
                long["errors"].append(f"exchange {i}: {describe(e)}")
                return
            i += 1
            time.sleep(a.interval)
        s.close()

    def new_connections():
        i = 0
        while time.monotonic() < stop and i < a.max_new:
            try:
                status, body = get(f"http://{a.host}:{a.http_port}/new-{i}", 5)
                if status == 200 and f"/new-{i}" in body:
                    new["ok"] += 1
                else:
                    new["failures"] += 1
                    new["errors"].append(f"new {i}: HTTP {status} {body[:100]!r}")
            except Exception as e:
                new["failures"] += 1
                new["errors"].append(f"new {i}: {describe(e)}")
            i += 1
            time.sleep(a.new_interval)

    threads = [threading.Thread(target=long_lived), threading.Thread(target=new_connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.seconds + 15)
    long["errors"] = long["errors"][:20]
    new["errors"] = new["errors"][:20]
    print(json.dumps({"long": long, "new": new}))


def cmd_calls(a):
    stop = time.monotonic() + a.seconds
    lock = threading.Lock()
    state = {"next": 0}
    answered = [None] * a.count
    errors = []

    def worker():
        while time.monotonic() < stop:
            with lock:
                i = state["next"]
                if i >= a.count:
                    return
                state["next"] += 1
            try:
                status, body = get(f"{a.url}/call-{i}", a.timeout)
                if status == 200 and f"/call-{i} " in body:
                    answered[i] = body.split(" ", 1)[0]
                else:
                    answered[i] = "failed"
                    errors.append(f"call {i}: HTTP {status} {body[:100]!r}")
            except Exception as e:
                answered[i] = "failed"
                errors.append(f"call {i}: {describe(e)}")
            time.sleep(a.interval)

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.seconds + a.timeout + 5)
    made = [x for x in answered if x is not None]
    by = {}
    for name in made:
        by[name] = by.get(name, 0) + 1
    print(json.dumps({"answered": made, "by": by, "failures": by.get("failed", 0),
                      "errors": errors[:20]}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("many")
    m.add_argument("url")
    m.add_argument("count", type=int)
    m.add_argument("--timeout", type=float, default=10)
    pl = sub.add_parser("plain")
    pl.add_argument("host")
    pl.add_argument("port", type=int)
    pl.add_argument("marker")
    pl.add_argument("--timeout", type=float, default=5)
    ld = sub.add_parser("load")
    ld.add_argument("host")
    ld.add_argument("http_port", type=int)
    ld.add_argument("echo_port", type=int)
    ld.add_argument("seconds", type=float)
    ld.add_argument("--interval", type=float, default=0.2)
    ld.add_argument("--new-interval", type=float, default=0.1)
    ld.add_argument("--max-new", type=int, default=1000)
    c = sub.add_parser("calls")
    c.add_argument("url")
    c.add_argument("count", type=int)
    c.add_argument("seconds", type=float)
    c.add_argument("--concurrency", type=int, default=1)
    c.add_argument("--interval", type=float, default=0)
    c.add_argument("--timeout", type=float, default=5)
    a = p.parse_args()
    {"many": cmd_many, "plain": cmd_plain, "load": cmd_load, "calls": cmd_calls}[a.cmd](a)


if __name__ == "__main__":
    main()

"""Test client for the sandbox's own tests, run in a pod. One line of output per attempt,
flushed at once, so a test can read progress while it runs:

  get URL COUNT            COUNT GETs, each on a new connection: "ok <body>" or "err <why>"
  until STOP_FILE URL MAX  the same until STOP_FILE exists (at most MAX GETs)
  connect HOST PORT        one TCP connect: "connected" or "err <exception>: <why>"
  resolve NAME SECONDS     "started", then polls the name until it resolves: "resolved
                           <address>", or "err <why>" once SECONDS have passed
"""
import os
import socket
import sys
import time
import urllib.request

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def get(url):
    try:
        with OPENER.open(url, timeout=5) as r:
            say("ok " + r.read().decode().strip())
    except Exception as e:
        say("err %s: %s" % (type(e).__name__, e))


mode = sys.argv[1]
if mode == "get":
    for _ in range(int(sys.argv[3])):
        get(sys.argv[2])
elif mode == "until":
    stop, url, most = sys.argv[2], sys.argv[3], int(sys.argv[4])
    for _ in range(most):
        if os.path.exists(stop):
            break
        get(url)
elif mode == "connect":
    try:
        socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5).close()
        say("connected")
    except Exception as e:
        say("err %s: %s" % (type(e).__name__, e))
elif mode == "resolve":
    say("started")
    deadline = time.monotonic() + float(sys.argv[3])
    while True:
        try:
            say("resolved " + socket.gethostbyname(sys.argv[2]))
            break
        except OSError as e:
            if time.monotonic() > deadline:
                say("err %s" % e)
                break
            time.sleep(0.05)
else:
    sys.exit("unknown mode " + mode)

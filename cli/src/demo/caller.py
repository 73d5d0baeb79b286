"""The app of the demo's frontend and intruder pods (network namespace mode): it knows nothing of
the mesh and calls the backend's Service every second, a new connection each time, by the
Service's name and by its ClusterIP in turn: GET <url>/from-<who>. One line per call on stdout.

  caller.py WHO SECONDS URL...

Standard library only. Every call has a time limit; it stops after SECONDS (or on SIGTERM).
"""
import sys
import threading
import time
import urllib.request

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# At most this many calls, whatever SECONDS says.
MAX_CALLS = 100000


def call(url):
    try:
        with OPENER.open(url, timeout=3) as r:
            print(f"{url}: HTTP {r.status}", flush=True)
    except Exception as e:
        print(f"{url}: {type(e).__name__}: {e}", flush=True)


def main():
    who, seconds, urls = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    start = time.monotonic()
    i = 0
    while i < MAX_CALLS:
        # Half a second out of step with the demo's whole seconds, when policy edits happen.
        at = start + 0.5 + i
        if at - start >= seconds:
            return
        time.sleep(max(0.0, at - time.monotonic()))
        url = f"{urls[i % len(urls)]}/from-{who}"
        # A thread per call: a slow refusal must not hold up the next call.
        threading.Thread(target=call, args=(url,), daemon=True).start()
        i += 1


if __name__ == "__main__":
    main()

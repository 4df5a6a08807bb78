"""A webhook receiver that verifies the platform's signatures (the Standard
Webhooks scheme) before trusting a delivery. Standard library only.

    python receiver.py --port 9000 --secret "$WEBHOOK_SECRET"

Each delivery carries `webhook-id` (stable across retries: de-duplicate on
it), `webhook-timestamp` (Unix seconds) and `webhook-signature`: one or more
space-separated `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`; while a
signing secret rotates, both the new and the old signature are sent, so a
receiver holding either secret accepts it. A secret written `whsec_<base64>`
is the base64-decoded key; any other string is used as it is.

`python receiver.py --self-test` checks the verification against signed and
tampered samples and exits non-zero if it is wrong.
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Deliveries older or newer than this are refused (replays).
TOLERANCE_SECONDS = 5 * 60


def key_of(secret):
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def sign(key, webhook_id, timestamp, body):
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(keys, headers, body, now=None):
    """The reason a delivery is refused, or None when it is genuine."""
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature", "").split()
    if not webhook_id or not timestamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        sent = int(timestamp)
    except ValueError:
        return "webhook-timestamp is not a number"
    if abs((now or time.time()) - sent) > TOLERANCE_SECONDS:
        return "webhook-timestamp is more than 5 minutes away"
    for key in keys:
        expected = sign(key, webhook_id, timestamp, body)
        if any(hmac.compare_digest(expected, s) for s in signatures):
            return None
    return "no signature matches"


class Receiver(BaseHTTPRequestHandler):
    keys = []
    seen = set()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        problem = verify(self.keys, headers, body)
        if problem:
            self.send_response(401)
            self.end_headers()
            print(f"refused: {problem}", flush=True)
            return
        webhook_id = headers["webhook-id"]
        if webhook_id not in self.seen:
            self.seen.add(webhook_id)
            event = json.loads(body)
            print(f"{webhook_id} {event['type']}: {json.dumps(event['data'])}", flush=True)
        # A retry of a delivery already handled is acknowledged again.
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def self_test():
    key = key_of("whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode())
    old = key_of("previous secret")
    body = b'{"type":"window.anomalous","timestamp":"2026-11-29T10:00:00Z","data":{}}'
    now = 1_800_000_000
    signed = {
        "webhook-id": "job_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(key, "job_1", now, body),
    }
    rotating = dict(signed, **{"webhook-signature": f"{sign(key, 'job_1', now, body)} {sign(old, 'job_1', now, body)}"})
    cases = [
        ("signed", [key], signed, body, now, None),
        ("either secret during a rotation", [old], rotating, body, now, None),
        ("tampered body", [key], signed, body + b" ", now, "no signature matches"),
        ("another secret", [old], signed, body, now, "no signature matches"),
        ("replayed later", [key], signed, body, now + 301, "webhook-timestamp is more than 5 minutes away"),
        ("unsigned", [key], {"webhook-id": "job_1"}, body, now, "missing webhook-id, webhook-timestamp or webhook-signature"),
    ]
    failed = 0
    for name, keys, headers, payload, at, expected in cases:
        got = verify(keys, headers, payload, now=at)
        status = "ok" if got == expected else f"FAILED: got {got!r}, expected {expected!r}"
        failed += got != expected
        print(f"{name}: {status}")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", action="append", default=[], help="repeat during a rotation")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if not args.secret:
        parser.error("--secret is required")
    Receiver.keys = [key_of(s) for s in args.secret]
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Receiver).serve_forever()


if __name__ == "__main__":
    main()

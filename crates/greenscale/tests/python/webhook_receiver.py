"""A webhook receiver that verifies each delivery with the Standard Webhooks library.

Usage: webhook_receiver.py PORT SECRET LOG
  /ok     answers 204 to every verified delivery
  /flaky  answers 500 to the first two tries of each message, then 204
  /down   always answers 500
A delivery whose signature does not verify is answered 401. Each request is logged to LOG
as one JSON line: path, webhook id, try number, verified, and the payload's type and data.
"""
import json
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

port, secret, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
webhook = Webhook(secret)
tries = Counter()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        msg_id = self.headers.get("webhook-id")
        tries[msg_id] += 1
        try:
            payload = webhook.verify(body, dict(self.headers))
            verified = True
        except WebhookVerificationError as e:
            payload, verified = {"error": str(e)}, False
        entry = {"path": self.path, "id": msg_id, "try": tries[msg_id], "verified": verified,
                 "type": payload.get("type"), "data": payload.get("data")}
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if not verified:
            status = 401
        elif self.path == "/down" or (self.path == "/flaky" and tries[msg_id] <= 2):
            status = 500
        else:
            status = 204
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

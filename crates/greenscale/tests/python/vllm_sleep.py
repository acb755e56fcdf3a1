"""An emulator of vLLM's OpenAI server with sleep mode, for the tests of GreenScale's `vllm`
sleep preset (vLLM needs a GPU, so the real one cannot run where the tests run).

What it encodes, from vLLM's public source and docs (vllm/entrypoints/serve/sleep/api_router.py
and docs/features/sleep_mode.md):
- the sleep routes exist only when the environment has VLLM_SERVER_DEV_MODE=1 (404 without);
- sleeping needs the server started with --enable-sleep-mode (an error otherwise);
- POST /sleep reads `level` from the query (default "1") and answers 200 with an empty body;
  POST /wake_up answers 200 once awake; GET /is_sleeping answers {"is_sleeping": bool};
- level 1 moves the weights to host memory and drops the KV cache; level 2 drops both;
- a sleep aborts the requests in flight.
What it does not know, and chooses: a request to a sleeping engine is answered 503 here.

Usage: vllm_sleep.py --port N [--enable-sleep-mode] [--weights-mib M] [--load-s S] [--wake-s W]
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--enable-sleep-mode", action="store_true")
parser.add_argument("--weights-mib", type=int, default=64)
parser.add_argument("--load-s", type=float, default=1.5)
parser.add_argument("--wake-s", type=float, default=0.2)
args = parser.parse_args()

DEV_MODE = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
lock = threading.Lock()
state = {"ready": False, "sleeping": False, "host_weights": None, "generation": 0}
in_flight = [0]


def log(message):
    print(f"vllm-emulator: {message}", flush=True)


def load():
    time.sleep(args.load_s)
    with lock:
        state["ready"] = True
    log(f"model loaded in {args.load_s} s")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body=b"", content_type="application/json"):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = urlparse(self.path).path
        if path == "/health":
            self.reply(200 if state["ready"] else 503)
        elif path == "/is_sleeping" and DEV_MODE:
            self.reply(200, json.dumps({"is_sleeping": state["sleeping"]}).encode())
        else:
            self.reply(404, b'{"detail":"Not Found"}')

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path in ("/sleep", "/wake_up") and not DEV_MODE:
            self.reply(404, b'{"detail":"Not Found"}')
        elif url.path == "/sleep":
            if not args.enable_sleep_mode:
                self.reply(500, b'{"error":"Sleep mode is not enabled"}')
                return
            level = parse_qs(url.query).get("level", ["1"])[0]
            with lock:
                aborted = in_flight[0]
                state["generation"] += 1
                state["sleeping"] = True
                # Level 1 keeps the weights in host memory; level 2 drops them.
                state["host_weights"] = bytearray(args.weights_mib << 20) if level == "1" else None
                if state["host_weights"] is not None:
                    for i in range(0, len(state["host_weights"]), 4096):
                        state["host_weights"][i] = 1
            log(f"sleep level={level}; aborted {aborted} requests in flight")
            self.reply(200, b"", "text/plain")
        elif url.path == "/wake_up":
            time.sleep(args.wake_s)
            with lock:
                state["sleeping"] = False
                state["host_weights"] = None
            log(f"awake in {args.wake_s} s")
            self.reply(200, b"", "text/plain")
        elif url.path == "/v1/chat/completions":
            self.chat(json.loads(body or b"{}"))
        else:
            self.reply(404, b'{"detail":"Not Found"}')

    def chat(self, request):
        with lock:
            if not state["ready"] or state["sleeping"]:
                self.reply(503, b'{"error":{"message":"the engine is sleeping","code":503}}')
                return
            generation = state["generation"]
            in_flight[0] += 1
        try:
            tokens = int(request.get("max_tokens") or 8)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()

            def send(obj):
                data = f"data: {obj}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            for i in range(tokens):
                time.sleep(0.02)
                if state["generation"] != generation:
                    # Aborted by a sleep: the stream is cut.
                    self.wfile.write(b"0\r\n\r\n")
                    self.close_connection = True
                    return
                chunk = {"choices": [{"index": 0, "delta": {"content": f" t{i}"}}]}
                send(json.dumps(chunk))
            done = {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3},
            }
            send(json.dumps(done))
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
        finally:
            with lock:
                in_flight[0] -= 1


threading.Thread(target=load, daemon=True).start()
log(f"listening on {args.port}; dev mode {DEV_MODE}; sleep mode {args.enable_sleep_mode}")
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()

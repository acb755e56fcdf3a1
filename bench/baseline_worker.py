"""Python workers of the prototype's design, the comparison baselines of GreenScale's benchmarks.

One loop: BLPOP a job from a Redis list, call an OpenAI-compatible chat endpoint, SET the
answer at result:{job_id}. It stops when the list stays empty for --idle-exit seconds.

--style prototype  as the prototype did it: `requests.post` per job (a new connection each
                   time), the answer read whole.
--style tuned      as well as one loop of this design can be written: one kept-alive HTTP
                   connection (the standard library's, without the overhead of `requests`),
                   the answer streamed as GreenScale's worker streams it (server-sent events,
                   the text joined from the deltas), and the connection re-opened only when
                   it breaks.
"""
import argparse
import http.client
import json
import urllib.parse

import redis
import requests

BODY = {
    "model": "meta-llama/Llama-3.3-70B-Instruct",
    "temperature": 0.7,
    "max_tokens": 200,
}


def prototype_call(url):
    def call(prompt):
        body = dict(BODY, messages=[{"role": "user", "content": prompt}])
        response = requests.post(url, json=body, timeout=60)
        return response.json()["choices"][0]["message"]["content"]

    return call


def tuned_call(url):
    target = urllib.parse.urlsplit(url)
    conn = None

    def call(prompt):
        nonlocal conn
        body = json.dumps(dict(BODY, stream=True, messages=[{"role": "user", "content": prompt}]))
        for attempt in (1, 2):
            if conn is None:
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                conn.request("POST", target.path, body, {"content-type": "application/json"})
                response = conn.getresponse()
                pieces = []
                for line in response:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        break
                    for choice in json.loads(data).get("choices", []):
                        pieces.append(choice.get("delta", {}).get("content") or "")
                response.read()  # the rest of the stream, so the connection can be reused
                return "".join(pieces)
            except (http.client.HTTPException, OSError):
                conn.close()
                conn = None
                if attempt == 2:
                    raise

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--list", default="jobs")
    parser.add_argument("--model-url", required=True, help="base URL ending in /v1")
    parser.add_argument("--idle-exit", type=float, default=1.0)
    parser.add_argument("--style", choices=["prototype", "tuned"], default="prototype")
    args = parser.parse_args()

    r = redis.Redis(host="127.0.0.1", port=args.redis_port)
    url = args.model_url.rstrip("/") + "/chat/completions"
    call = prototype_call(url) if args.style == "prototype" else tuned_call(url)
    while True:
        item = r.blpop(args.list, timeout=args.idle_exit)
        if item is None:
            return
        job = json.loads(item[1])
        r.set(f"result:{job['job_id']}", call(job["prompt"]), ex=300)


if __name__ == "__main__":
    main()

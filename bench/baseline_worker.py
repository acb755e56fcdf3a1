"""The prototype's worker design, as the comparison baseline for GreenScale's benchmarks.

One loop: BLPOP a job from a Redis list, call an OpenAI-compatible chat endpoint, SET the
answer at result:{job_id}. It stops when the list stays empty for --idle-exit seconds.
"""
import argparse
import json

import redis
import requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--list", default="jobs")
    parser.add_argument("--model-url", required=True, help="base URL ending in /v1")
    parser.add_argument("--idle-exit", type=float, default=1.0)
    args = parser.parse_args()

    r = redis.Redis(host="127.0.0.1", port=args.redis_port)
    session = requests.Session()
    url = args.model_url.rstrip("/") + "/chat/completions"
    while True:
        item = r.blpop(args.list, timeout=args.idle_exit)
        if item is None:
            return
        job = json.loads(item[1])
        response = session.post(
            url,
            json={
                "model": "meta-llama/Llama-3.3-70B-Instruct",
                "messages": [{"role": "user", "content": job["prompt"]}],
                "temperature": 0.7,
                "max_tokens": 200,
            },
            timeout=60,
        )
        answer = response.json()["choices"][0]["message"]["content"]
        r.set(f"result:{job['job_id']}", answer, ex=300)


if __name__ == "__main__":
    main()

"""Runs a batch through GreenScale's Batch API with the official OpenAI Python SDK, unchanged.

Usage (OPENAI_BASE_URL and OPENAI_API_KEY set):
  openai_batch.py create N [MALFORMED_LINE] [WINDOW]  uploads N requests (and a malformed
                                             line at MALFORMED_LINE), creates a batch,
                                             prints its id
  openai_batch.py wait BATCH_ID N [MALFORMED_LINE]  polls it to `completed` and checks the
                                             output and error files
  openai_batch.py cancel BATCH_ID             cancels it, prints its status
With BATCH_WEBHOOK_URL set, `create` names it as the batch's webhook_url.
"""
import json
import os
import sys
import time

from openai import OpenAI

client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY


def custom_id(i):
    return f"request-{i}"


def create(n, malformed, window):
    lines = []
    for i in range(n):
        body = {
            "model": "demo",
            "messages": [{"role": "user", "content": f"Say something about the number {i}"}],
            "max_tokens": 8,
        }
        lines.append(json.dumps({"custom_id": custom_id(i), "method": "POST", "url": "/v1/chat/completions", "body": body}))
    if malformed:
        lines.insert(malformed - 1, '{"custom_id": "broken", "method": "POST", "url": ')
    data = ("\n".join(lines) + "\n").encode()
    f = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(data), f
    assert client.files.retrieve(f.id).id == f.id
    webhook = os.environ.get("BATCH_WEBHOOK_URL")
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window=window,
        metadata={"suite": "greenscale"},
        extra_body={"webhook_url": webhook} if webhook else None,
    )
    assert b.status == "validating", b
    assert b.metadata == {"suite": "greenscale"}, b.metadata
    print(b.id)


def wait(batch_id, n, malformed):
    deadline = time.time() + 600
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            break
        assert time.time() < deadline, f"batch still {b.status}: {b.request_counts}"
        time.sleep(0.5)
    assert b.status == "completed", b
    assert b.request_counts.total == n + (1 if malformed else 0), b.request_counts
    assert b.request_counts.completed == n, b.request_counts
    assert b.completed_at and b.in_progress_at and b.finalizing_at, b
    out = client.files.content(b.output_file_id).text.splitlines()
    ids = [json.loads(line)["custom_id"] for line in out]
    assert len(ids) == n, f"{len(ids)} output lines for {n} requests"
    assert sorted(ids) == sorted(custom_id(i) for i in range(n)), "custom_ids differ"
    assert len(set(ids)) == n, "a request was answered twice"
    first = json.loads(out[0])
    assert first["response"]["status_code"] == 200, first
    assert first["response"]["body"]["object"] == "chat.completion", first
    assert first["response"]["body"]["choices"][0]["message"]["content"], first
    if malformed:
        assert b.request_counts.failed == 1, b.request_counts
        errors = [json.loads(line) for line in client.files.content(b.error_file_id).text.splitlines()]
        assert len(errors) == 1, errors
        assert errors[0]["error"]["line"] == malformed, errors
        assert errors[0]["error"]["message"].startswith(f"line {malformed}:"), errors
        assert b.errors.data[0].line == malformed, b.errors
    else:
        assert b.error_file_id is None, b.error_file_id
    listed = [x.id for x in client.batches.list(limit=100)]
    assert batch_id in listed, listed
    assert b.output_file_id in [x.id for x in client.files.list()]
    assert client.files.delete(b.input_file_id).deleted
    assert b.input_file_id not in [x.id for x in client.files.list()]
    print(json.dumps({"status": b.status, "lines": len(ids), "counts": b.request_counts.model_dump()}))


mode = sys.argv[1]
if mode == "create":
    create(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0, sys.argv[4] if len(sys.argv) > 4 else "24h")
elif mode == "cancel":
    print(client.batches.cancel(sys.argv[2]).status)
elif mode == "wait":
    wait(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
else:
    sys.exit(f"unknown mode {mode}")

"""Checks GreenScale's gateway with the official OpenAI Python SDK, unchanged.

Usage: openai_sdk.py create|stream|models  (OPENAI_BASE_URL and OPENAI_API_KEY set)
"""
import sys

from openai import OpenAI

client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
mode = sys.argv[1]
messages = [{"role": "user", "content": "What is 2+2?"}]

if mode == "create":
    r = client.chat.completions.create(model="greenscale-demo", messages=messages)
    text = r.choices[0].message.content
    assert text.startswith("[demo]"), text
    assert r.usage.completion_tokens > 0, r.usage
    print(text)
elif mode == "stream":
    pieces = []
    stream = client.chat.completions.create(
        model="greenscale-demo",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    text = "".join(pieces)
    assert text.startswith("[demo]"), text
    assert len(pieces) > 2, f"expected the answer in pieces, got {pieces}"
    assert usage is not None and usage.completion_tokens > 0
    print(len(pieces), "pieces:", text)
elif mode == "models":
    ids = [m.id for m in client.models.list()]
    assert "greenscale-demo" in ids, ids
    print(ids)
else:
    sys.exit(f"unknown mode {mode}")

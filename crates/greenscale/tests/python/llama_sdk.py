"""Calls a chat model through GreenScale with the official OpenAI Python SDK, unchanged, and
prints what it got as one JSON line: the text, the usage, and (streamed) the content chunks
with the seconds at which each arrived.

Usage: llama_sdk.py create|stream MODEL PROMPT [MAX_TOKENS]  (OPENAI_BASE_URL, OPENAI_API_KEY set)
"""
import json
import sys
import time

from openai import OpenAI

mode, model, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 32
client = OpenAI()
messages = [{"role": "user", "content": prompt}]
start = time.monotonic()

if mode == "create":
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
    print(json.dumps({
        "text": r.choices[0].message.content,
        "finish_reason": r.choices[0].finish_reason,
        "usage": {"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens},
    }))
elif mode == "stream":
    chunks, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage:
            usage = {"prompt_tokens": chunk.usage.prompt_tokens,
                     "completion_tokens": chunk.usage.completion_tokens}
        for choice in chunk.choices:
            if choice.delta.content:
                chunks.append([time.monotonic() - start, choice.delta.content])
            if choice.finish_reason:
                finish = choice.finish_reason
    print(json.dumps({
        "text": "".join(c for _, c in chunks),
        "finish_reason": finish,
        "usage": usage,
        "chunks": chunks,
    }))
else:
    sys.exit(f"unknown mode {mode}")

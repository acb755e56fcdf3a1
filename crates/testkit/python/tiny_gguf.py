"""Writes a tiny llama-architecture GGUF model with random weights, for tests.

The vocabulary (SentencePiece, 32,000 tokens) is taken from llama.cpp's own
`ggml-vocab-llama-spm.gguf`; the weights are seeded random numbers, so the model's text is
meaningless, but llama-server loads it and generates real tokens with real usage counts.

Usage: tiny_gguf.py VOCAB.gguf OUT.gguf [--embd 64] [--layers 2] [--ctx 512] [--seed 1]
A larger --embd and --layers make a larger file that takes longer to load.
"""

import argparse

import gguf
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("vocab")
p.add_argument("out")
p.add_argument("--embd", type=int, default=64)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--ctx", type=int, default=512)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()

vocab = gguf.GGUFReader(a.vocab)


def field(name):
    f = vocab.fields[name]
    if len(f.types) > 1:  # an array
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    v = f.parts[f.data[0]]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(v).decode("utf-8")
    return v[0].item()


tokens = field("tokenizer.ggml.tokens")
n_vocab, n_embd, n_head = len(tokens), a.embd, 4
n_ff = n_embd * 2

w = gguf.GGUFWriter(a.out, "llama")
w.add_name("greenscale-tiny-test")
w.add_context_length(a.ctx)
w.add_embedding_length(n_embd)
w.add_block_count(a.layers)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head)
w.add_rope_dimension_count(n_embd // n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_vocab_size(n_vocab)
w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_tokenizer_model(field("tokenizer.ggml.model"))
w.add_tokenizer_pre(field("tokenizer.ggml.pre"))
w.add_token_list(tokens)
w.add_token_scores(field("tokenizer.ggml.scores"))
w.add_token_types(field("tokenizer.ggml.token_type"))
w.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
w.add_eos_token_id(field("tokenizer.ggml.eos_token_id"))
w.add_unk_token_id(field("tokenizer.ggml.unknown_token_id"))
w.add_add_bos_token(True)
w.add_add_eos_token(False)

rng = np.random.default_rng(a.seed)


def rand(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)


w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
w.add_tensor("output.weight", rand(n_vocab, n_embd))
for i in range(a.layers):
    b = f"blk.{i}"
    w.add_tensor(f"{b}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"{b}.{name}.weight", rand(n_embd, n_embd))
    w.add_tensor(f"{b}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor(f"{b}.ffn_gate.weight", rand(n_ff, n_embd))
    w.add_tensor(f"{b}.ffn_up.weight", rand(n_ff, n_embd))
    w.add_tensor(f"{b}.ffn_down.weight", rand(n_embd, n_ff))

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

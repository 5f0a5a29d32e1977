#!/usr/bin/python3
"""bench_exec_torch.py HIDDEN HEADS KV_HEADS INTERMEDIATE T B THREADS: time one block in PyTorch.

The baseline of bench/bench_exec.c: the same NeuroLLM block (pre-norm RMSNorm, RoPE, causal
grouped-query attention as Hugging Face's eager Llama attention, SwiGLU MLP, residuals) in
float32 on the CPU with THREADS threads, forward and backward from a random input and output
gradient. Prints "ms=<best of rounds>" on stdout. Called by the bench only when torch imports.
"""
import sys
import time

import torch

ROUNDS = 3


def main():
    hidden, heads, kv_heads, inter, T, B, threads = (int(a) for a in sys.argv[1:8])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    D = 64
    p = lambda *shape: torch.nn.Parameter(torch.randn(*shape) * 0.02)  # noqa: E731
    w = {
        "n1": torch.nn.Parameter(torch.ones(hidden)), "n2": torch.nn.Parameter(torch.ones(hidden)),
        "q": p(heads * D, hidden), "k": p(kv_heads * D, hidden), "v": p(kv_heads * D, hidden),
        "o": p(hidden, heads * D), "gate": p(inter, hidden), "up": p(inter, hidden),
        "down": p(hidden, inter),
    }
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.outer(torch.arange(T).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((T, T), float("-inf")).triu(1)

    def norm(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))

    def rot(x):
        return torch.cat((-x[..., D // 2:], x[..., : D // 2]), dim=-1)

    def block(x):
        h = norm(x, w["n1"])
        q = (h @ w["q"].T).view(B, T, heads, D).transpose(1, 2)
        k = (h @ w["k"].T).view(B, T, kv_heads, D).transpose(1, 2)
        v = (h @ w["v"].T).view(B, T, kv_heads, D).transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) / D**0.5 + mask, dim=-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, hidden) @ w["o"].T
        h = norm(x, w["n2"])
        return x + (torch.nn.functional.silu(h @ w["gate"].T) * (h @ w["up"].T)) @ w["down"].T

    x = torch.randn(B, T, hidden, requires_grad=True)
    dout = torch.randn(B, T, hidden) * 1e-3
    best = float("inf")
    for r in range(ROUNDS + 1):
        t0 = time.perf_counter()
        block(x).backward(dout)
        dt = time.perf_counter() - t0
        if r > 0:
            best = min(best, dt)
    print(f"ms={best * 1e3:.3f}")


if __name__ == "__main__":
    main()

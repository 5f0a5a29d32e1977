#!/usr/bin/python3
"""make_reference.py OUT: PyTorch reference tensors for the CPU executor (tests/unit/test_exec.c).

An independent implementation of NeuroLLM, written from the Hugging Face Llama definition
(LlamaRMSNorm, rotate-half RoPE with theta 10000, repeat_kv grouped-query attention with a causal
mask, SwiGLU MLP, untied LM head, cross-entropy with ignore_index -1), computed in float64 on the
CPU. The weights come from a formula that C and Python evaluate bit-identically (integer hashing,
then exact scaling by powers of two), so no weight file is needed. It writes, for a tiny model:
the inputs, the logits, the loss, the gradient of every parameter, and the losses before and
after each of three AdamW steps (torch.optim.AdamW, clip_grad_norm_, warm-up + cosine schedule),
with the norm of each tensor's total update.

Run it with Debian's python3-torch: `make reference`. Not part of `make test`; the output file is
committed. File format (little-endian): b"NSREF001", u32 count, then per tensor: u32 name length,
name, u32 dtype (0 f32, 1 i32, 2 f64), u32 ndim, u32 dims[ndim], data.
"""
import math
import struct
import sys

import numpy as np
import torch

# The tiny model: 2 layers, hidden 128 -> 2 heads of 64, 1 key/value head (grouped-query attention
# with 2 query heads per kv head), intermediate 160 (not a multiple of the SIMD tile widths on
# purpose), vocab 128, a batch of 2 sequences of 16 tokens.
LAYERS, HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, VOCAB = 2, 128, 2, 1, 160, 128
B, T = 2, 16
HEAD_DIM = 64
WEIGHT_SEED = 20260101
DATA_SEED = 7
EPS_NORM = 1e-5
THETA = 10000.0
# AdamW and schedule, mirrored by the C test
LR_MAX, LR_MIN, WARMUP, DECAY_STEPS = 1e-2, 1e-3, 2, 10
BETA1, BETA2, EPS, WEIGHT_DECAY, GRAD_CLIP = 0.9, 0.95, 1e-8, 0.1, 0.5
STEPS = 3

MASK64 = (1 << 64) - 1


def mix64(x):
    """splitmix64's finalizer on a numpy uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def formula_weights(index, shape, is_norm):
    """Tensor `index` of the model, element j: a hash of (index, j, seed) scaled exactly."""
    n = int(np.prod(shape))
    j = np.arange(n, dtype=np.uint64)
    seed_mix = mix64(np.array([WEIGHT_SEED], dtype=np.uint64))[0]
    z = mix64((np.uint64(index) << np.uint64(32)) + j ^ seed_mix)
    if is_norm:
        u = ((z >> np.uint64(42)).astype(np.int64) - (1 << 21)).astype(np.float64) * 2.0**-21
        w = 1.0 + u * 0.25
    else:
        u = ((z >> np.uint64(40)).astype(np.int64) - (1 << 23)).astype(np.float64) * 2.0**-23
        w = u * (1.0 if index == 0 else 0.125)
    assert np.all(w.astype(np.float32).astype(np.float64) == w), "weights must be exact in f32"
    return torch.tensor(w.reshape(shape), dtype=torch.float64)


def param_specs():
    """(name, shape) in the executor's buffer order."""
    kv = KV_HEADS * HEAD_DIM
    specs = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.v_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    specs += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return specs


def rms_norm(x, w):
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + EPS_NORM))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables():
    inv_freq = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def forward(p, tokens, targets):
    cos, sin = rope_tables()
    x = p["model.embed_tokens.weight"][tokens]  # [B,T,C]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(LAYERS):
        pre = f"model.layers.{i}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"])
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(B, T, HEADS, HEAD_DIM).transpose(1, 2)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)  # repeat_kv
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(HEAD_DIM) + mask
        att = torch.softmax(scores, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, HIDDEN)
        x = x + y @ p[pre + "self_attn.o_proj.weight"].T
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"])
        gate = h @ p[pre + "mlp.gate_proj.weight"].T
        up = h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ p[pre + "mlp.down_proj.weight"].T
    logits = rms_norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].T
    loss = torch.nn.functional.cross_entropy(
        logits.view(-1, VOCAB), targets.view(-1), ignore_index=-1
    )
    return logits, loss


def lr_at(step):
    if step < WARMUP:
        return LR_MAX * (step + 1) / WARMUP
    if step >= DECAY_STEPS:
        return LR_MIN
    progress = (step - WARMUP) / (DECAY_STEPS - WARMUP)
    return LR_MIN + 0.5 * (LR_MAX - LR_MIN) * (1 + math.cos(math.pi * progress))


class Writer:
    def __init__(self):
        self.items = []

    def add(self, name, array, dtype):
        array = np.ascontiguousarray(array, dtype={0: "<f4", 1: "<i4", 2: "<f8"}[dtype])
        head = struct.pack("<I", len(name)) + name.encode()
        head += struct.pack("<II", dtype, array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        self.items.append(head + array.tobytes())

    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"NSREF001" + struct.pack("<I", len(self.items)) + b"".join(self.items))


def main():
    torch.manual_seed(0)
    specs = param_specs()
    params = {}
    for index, (name, shape) in enumerate(specs):
        params[name] = formula_weights(index, shape, len(shape) == 1).requires_grad_(True)
    rng = np.random.default_rng(DATA_SEED)
    tokens = torch.tensor(rng.integers(0, VOCAB, size=(B, T)), dtype=torch.long)
    targets = torch.tensor(rng.integers(0, VOCAB, size=(B, T)), dtype=torch.long)
    targets[0, 3] = -1
    targets[1, T - 1] = -1
    targets[1, 0] = -1

    out = Writer()
    out.add("config", np.array([LAYERS, HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, VOCAB, B, T,
                                WEIGHT_SEED]), 1)
    out.add("optim", np.array([LR_MAX, LR_MIN, WARMUP, DECAY_STEPS, BETA1, BETA2, EPS,
                               WEIGHT_DECAY, GRAD_CLIP, STEPS]), 2)
    out.add("weights_sum", np.array([sum(float(p.sum()) for p in params.values())]), 2)
    out.add("tokens", tokens.numpy(), 1)
    out.add("targets", targets.numpy(), 1)

    logits, loss = forward(params, tokens, targets)
    loss.backward()
    out.add("logits", logits.detach().numpy(), 0)
    out.add("loss", np.array([loss.item()]), 2)
    for name, _ in specs:
        out.add("grad." + name, params[name].grad.numpy(), 0)

    initial = {name: p.detach().clone() for name, p in params.items()}
    decay = [params[n] for n, s in specs if len(s) == 2]
    no_decay = [params[n] for n, s in specs if len(s) == 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR_MAX, betas=(BETA1, BETA2), eps=EPS,
    )
    losses, norms = [], []
    for step in range(STEPS):
        opt.zero_grad()
        _, loss = forward(params, tokens, targets)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), GRAD_CLIP)))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(forward(params, tokens, targets)[1].item())
    out.add("step_losses", np.array(losses), 2)
    out.add("step_grad_norms", np.array(norms), 2)
    out.add("update_norms", np.array([float((params[n] - initial[n]).norm()) for n, _ in specs]), 2)
    out.save(sys.argv[1])
    print(f"{sys.argv[1]}: loss {losses[0]:.6f} -> {losses[-1]:.6f} after {STEPS} AdamW steps, "
          f"grad norms {', '.join(f'{n:.4f}' for n in norms)}")


if __name__ == "__main__":
    main()

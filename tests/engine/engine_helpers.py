"""Test helpers for the engine: a tiny deterministic VLModel, a toy tokenizer and ProcessedInput builders."""

from __future__ import annotations

import hashlib

import torch

import kernels
from kernels import reference
from vlm_service.models.common import AttentionContext, ModelSpec, MultimodalEmbeds
from vlm_service.types import ProcessedInput, ProcessedVisual

VOCAB = 128
EOS = 1
VISION_START, VISION_END, IMAGE_PAD = 120, 121, 122
PATCH_DIM = 3 * 2 * 2 * 2  # C * temporal_patch * patch * patch


class ToyVLM(torch.nn.Module):
    """A 2-layer GQA decoder with 3D MRoPE and a linear 'vision tower' (2x2 merge = mean of 4 patches),
    optionally with deepstack. Deterministic from `seed`."""

    def __init__(self, seed: int = 0, hidden: int = 64, heads: int = 4, kv_heads: int = 2, layers: int = 2,
                 deepstack: bool = True, max_pos: int = 4096):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        hd = hidden // heads
        self.spec = ModelSpec("Toy", layers, heads, kv_heads, hd, hidden, VOCAB, max_pos, IMAGE_PAD, VISION_START,
                              (EOS,), 2, 2, 2)

        def w(*shape):
            return torch.nn.Parameter(torch.randn(*shape, generator=g) * shape[-1] ** -0.5)

        self.embed = w(VOCAB, hidden)
        self.qkv = torch.nn.ParameterList([w(hidden, (heads + 2 * kv_heads) * hd) for _ in range(layers)])
        self.o = torch.nn.ParameterList([w(heads * hd, hidden) for _ in range(layers)])
        self.mlp = torch.nn.ParameterList([w(hidden, hidden) for _ in range(layers)])
        self.norm = torch.nn.Parameter(torch.ones(hidden))
        self.lm_head = w(hidden, VOCAB)
        self.vis = w(PATCH_DIM, hidden)
        self.deep = torch.nn.ParameterList([w(hidden, hidden) for _ in range(2 if deepstack else 0)])
        self.register_buffer("cos_sin", reference.rope_cos_sin_cache(hd, max_pos, 10000.0))
        self.section = (hd // 2 - 2 * (hd // 6), hd // 6, hd // 6)
        self.encode_calls = 0

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        self.encode_calls += 1
        out, start = [], 0
        for t, h, w in grid_thw.tolist():
            n = t * h * w
            x = torch.tanh(pixel_values[start:start + n] @ self.vis)  # [n, hidden]
            emb = x.reshape(n // 4, 4, -1).mean(1)  # 2x2 merge: [n/4, hidden]
            out.append((emb, [emb @ d for d in self.deep]))
            start += n
        return out

    def forward(self, input_ids, positions, ctx: AttentionContext, mm: MultimodalEmbeds | None = None):
        x = self.embed[input_ids]  # [T, hidden]
        if mm is not None:
            x = x.clone()
            x[mm.mask] = mm.embeds.to(x.dtype)
        s = self.spec
        for layer in range(s.num_layers):
            h = kernels.rmsnorm(x, self.norm, 1e-6)
            qkv = h @ self.qkv[layer]
            q, k, v = qkv.split([s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim,
                                 s.num_kv_heads * s.head_dim], dim=-1)
            q = q.reshape(-1, s.num_heads, s.head_dim).contiguous()
            k = k.reshape(-1, s.num_kv_heads, s.head_dim).contiguous()
            v = v.reshape(-1, s.num_kv_heads, s.head_dim).contiguous()
            reference.apply_mrope_(q, k, positions, self.cos_sin, self.section, False)
            x = x + ctx.attend(layer, q, k, v).flatten(1) @ self.o[layer]
            x = x + torch.tanh(kernels.rmsnorm(x, self.norm, 1e-6) @ self.mlp[layer])
            if mm is not None and mm.deepstack and layer < len(mm.deepstack):
                x = x.clone()
                x[mm.mask] = x[mm.mask] + mm.deepstack[layer].to(x.dtype)
        return kernels.rmsnorm(x, self.norm, 1e-6)

    def compute_logits(self, hidden):
        return (hidden @ self.lm_head).float() * 4.0  # sharpen: fewer near-ties


class ToyTokenizer:
    """Token i < 100 decodes to a fixed byte string; some tokens are partial UTF-8 bytes of multi-byte chars."""

    table = {i: bytes([97 + i % 26]) * (1 + i % 3) for i in range(2, 100)}
    table.update({10: b" ", 11: b"\xc3", 12: b"\xa9", 13: b"\xe2\x82", 14: b"\xac", 15: b"STOP", 16: b"!"})

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return b"".join(self.table.get(i, b"") for i in ids).decode("utf-8", errors="replace")


def image(seed: int, h: int = 4, w: int = 4, offset: int = 0) -> ProcessedVisual:
    """A fake preprocessed image of h x w patches (h, w even); its content hash follows from `seed`."""
    g = torch.Generator().manual_seed(seed)
    pix = torch.randn(h * w, PATCH_DIM, generator=g)
    return ProcessedVisual(pix, (1, h, w), hashlib.sha256(str(seed).encode()).hexdigest(), offset, h * w // 4)


def build_input(*parts) -> ProcessedInput:
    """parts: lists of text token ids or ProcessedImages (offsets filled in), Qwen-style MRoPE positions."""
    ids: list[int] = []
    pos: list[tuple[int, int, int]] = []
    images = []
    nxt = 0
    for part in parts:
        if isinstance(part, ProcessedVisual):
            ids.append(VISION_START)
            pos.append((nxt,) * 3)
            nxt += 1
            _, h, w = part.grid_thw
            img = ProcessedVisual(part.pixel_values, part.grid_thw, part.content_hash, len(ids), part.num_tokens)
            images.append(img)
            for r in range(h // 2):
                for c in range(w // 2):
                    ids.append(IMAGE_PAD)
                    pos.append((nxt, nxt + r, nxt + c))
            nxt += max(h, w) // 2
            ids.append(VISION_END)
            pos.append((nxt,) * 3)
            nxt += 1
        else:
            for t in part:
                ids.append(t)
                pos.append((nxt,) * 3)
                nxt += 1
    positions = torch.tensor(pos, dtype=torch.long).T.contiguous()
    return ProcessedInput(ids, images, positions, nxt - len(ids))


def text(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(20, 100, (n,), generator=g).tolist()


class DenseCausal:
    """AttentionContext for one whole sequence with no cache: the oracle the paged path must match."""

    def attend(self, layer, q, k, v):
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1).transpose(0, 1) for t in (k, v))
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k, v, is_causal=True)
        return o.transpose(0, 1)


@torch.inference_mode()
def oracle_greedy(model: ToyVLM, inp: ProcessedInput, max_tokens: int) -> list[int]:
    """Greedy tokens by recomputing the whole sequence every step (no KV cache, no engine)."""
    ids = list(inp.input_ids)
    embeds = model.encode_images(torch.cat([i.pixel_values for i in inp.visuals]),
                                 torch.tensor([i.grid_thw for i in inp.visuals])) if inp.visuals else []
    out = []
    for _ in range(max_tokens):
        gen = torch.arange(len(inp.input_ids), len(ids)) + inp.mrope_delta
        pos = torch.cat([inp.positions, gen[None].expand(3, -1)], dim=1)
        mm = None
        if embeds:
            mask = torch.zeros(len(ids), dtype=torch.bool)
            for img in inp.visuals:
                mask[img.offset:img.offset + img.num_tokens] = True
            deep = [torch.cat(d) for d in zip(*[e[1] for e in embeds])] if embeds[0][1] else None
            mm = MultimodalEmbeds(torch.cat([e[0] for e in embeds]), mask, deep)
        hidden = model.forward(torch.tensor(ids), pos, DenseCausal(), mm)
        tok = int(model.compute_logits(hidden[-1:]).argmax(-1))
        out.append(tok)
        ids.append(tok)
    return out


def run_to_completion(engine, requests) -> dict:
    """requests: [(request_id, ProcessedInput, SamplingParams)] added at once; returns id -> (tokens, text, Finished)."""
    for rid, inp, sp in requests:
        engine.add(rid, inp, sp)
    toks = {rid: [] for rid, _, _ in requests}
    texts = {rid: "" for rid, _, _ in requests}
    fins = {}
    for _ in range(100000):
        if not engine.has_work():
            break
        for o in engine.step():
            if hasattr(o, "token_ids"):
                toks[o.request_id] += list(o.token_ids)
                texts[o.request_id] += o.text
            else:
                fins[o.request_id] = o
    return {rid: (toks[rid], texts[rid], fins.get(rid)) for rid in toks}

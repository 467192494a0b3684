"""The piecewise prefill path (engine/prefill_graphs.py) in its eager mode on the CPU: padded static buffers,
padding rows (slot -1), dense deepstack and the attention between the pieces give the logits and the KV cache of
the plain forward, on tiny Qwen3-VL, Qwen2.5-VL and Qwen3-VL-MoE models."""

from __future__ import annotations

import pytest
import torch
from qwen3_moe_tiny_helpers import build_tiny_qwen3_moe
from qwen3_tiny_helpers import IMAGE, PATCH_DIM

import vit_backends
from vlm_service.config import EngineConfig
from vlm_service.engine.attention import BatchLayout
from vlm_service.engine.model_runner import ModelRunner
from vlm_service.engine.prefill_graphs import PrefillGraphs, prefill_graph_sizes, supports_prefill_graphs
from vlm_service.models.common import MultimodalEmbeds
from vlm_service.models.layers import seeded_weights_
from vlm_service.models.loader import load_model

transformers = pytest.importorskip("transformers")
BS, MAX = 16, 300  # buckets 128, 256, 300


def _qwen2_5():
    from vlm_service.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        image_token_id=IMAGE, vision_start_token_id=502, vision_end_token_id=503, tie_word_embeddings=False)
    model = Qwen2_5_VLForConditionalGeneration(cfg.to_dict(), torch.float32, "cpu", vit_backends.create("sdpa"))
    seeded_weights_(model, 3)
    return model.eval()


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl", "qwen3_vl_moe"])
def model(request, tiny_qwen3_dir, tmp_path_factory):
    if request.param == "qwen2_5_vl":
        return _qwen2_5()
    path = tiny_qwen3_dir if request.param == "qwen3_vl" else build_tiny_qwen3_moe(tmp_path_factory.mktemp("moe"))
    return load_model(path, torch.float32, torch.device("cpu"), vit_backends.create("sdpa"))


class _Seq:
    """A test sequence: token ids, MRoPE-like positions, an image span, blocks [base, base + 16)."""

    def __init__(self, model, seed: int, length: int, image_at: int | None = None, grid=(1, 8, 8)):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 400, (length,), generator=g)
        self.pos = torch.arange(length).expand(3, -1).clone()
        self.table = list(range(seed * 20, seed * 20 + 20))
        self.image = None
        if image_at is not None:
            patch = model.spec.patch_size
            pix = torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * patch * patch, generator=g)
            emb, deep = model.encode_images(pix, torch.tensor([grid]))[0]
            n = emb.shape[0]
            self.ids[image_at:image_at + n] = IMAGE
            self.pos[1, image_at:image_at + n] += torch.arange(n) // 4
            self.pos[2, image_at:image_at + n] += torch.arange(n) % 4
            self.image = (image_at, emb, deep)


def _inputs(chunks):
    """chunks: [(seq, start, end)] -> ids, positions, layout, mm of one flat step."""
    ids, pos, slots, mask, embeds, deeps = [], [], [], [], [], []
    for seq, a, b in chunks:
        ids.append(seq.ids[a:b])
        pos.append(seq.pos[:, a:b])
        slots += [seq.table[i // BS] * BS + i % BS for i in range(a, b)]
        m = torch.zeros(b - a, dtype=torch.bool)
        if seq.image is not None:
            at, emb, deep = seq.image
            lo, hi = max(a, at), min(b, at + emb.shape[0])
            if lo < hi:
                m[lo - a:hi - a] = True
                embeds.append(emb[lo - at:hi - at])
                deeps.append([d[lo - at:hi - at] for d in deep])
        mask.append(m)
    layout = BatchLayout([b - a for _, a, b in chunks], [b for _, _, b in chunks], [s.table for s, _, _ in chunks],
                         torch.tensor(slots))
    mm = None
    if embeds:
        flat = torch.cat(mask)
        deep = [torch.cat(x) for x in zip(*deeps)] if deeps[0] else None
        mm = MultimodalEmbeds(torch.cat(embeds), flat, deep, flat.nonzero()[:, 0])
    return torch.cat(ids), torch.cat(pos, dim=1), layout, mm


def _run(model, steps, piecewise: bool):
    runner = ModelRunner(model, EngineConfig(block_size=BS, num_blocks=128, cuda_graphs=False), "cpu", 128)
    if piecewise:
        runner.prefill_graphs = PrefillGraphs(runner, MAX, eager=True)
    logits = []
    for chunks in steps:
        ids, pos, layout, mm = _inputs(chunks)
        logits.append(runner.execute(ids, pos, layout, torch.arange(ids.shape[0]), mm, False))
    return logits, runner.kv_caches


def _cases(model):
    a = _Seq(model, 1, 200, image_at=30)
    b = _Seq(model, 2, 90)
    c = _Seq(model, 3, 400, image_at=250)
    return {
        "text_only": [[(b, 0, 77)], [(b, 77, 90)]],
        "one_image": [[(a, 0, 200)]],
        "image_split_over_chunks": [[(a, 0, 40)], [(a, 40, 200)]],
        "mixed_prefill_and_decode": [[(a, 0, 199)], [(a, 199, 200), (b, 0, 61)]],
        "exactly_a_bucket": [[(c, 0, 128)], [(c, 128, 256)]],
        "over_the_max_is_eager": [[(c, 0, 301)], [(c, 301, 302), (b, 0, 5)]],
    }


@pytest.mark.parametrize("case", ["text_only", "one_image", "image_split_over_chunks", "mixed_prefill_and_decode",
                                  "exactly_a_bucket", "over_the_max_is_eager"])
def test_piecewise_path_matches_the_plain_forward(model, case):
    assert supports_prefill_graphs(model)
    steps = _cases(model)[case]
    ref, ref_kv = _run(model, steps, piecewise=False)
    got, got_kv = _run(model, steps, piecewise=True)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    for r, g in zip(ref_kv, got_kv):  # padding rows stored nothing (the scratch block included)
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_deepstack_buffers_are_cleared_after_an_image_step(model):
    a, b = _Seq(model, 1, 200, image_at=30), _Seq(model, 2, 90)
    steps = [[(a, 0, 100)], [(b, 0, 90)]]
    ref, _ = _run(model, steps, piecewise=False)
    got, _ = _run(model, steps, piecewise=True)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)


def test_the_piecewise_path_is_taken_within_the_max_only(model, monkeypatch):
    runner = ModelRunner(model, EngineConfig(block_size=BS, num_blocks=128, cuda_graphs=False), "cpu", 128)
    pg = runner.prefill_graphs = PrefillGraphs(runner, MAX, eager=True)
    calls = []
    monkeypatch.setattr(pg, "run", lambda *a: calls.append(a[0].shape[0]) or torch.zeros(a[0].shape[0], 64))
    seq = _Seq(model, 4, 310)
    for chunks in ([(seq, 0, 300)], [(seq, 0, 301)]):
        ids, pos, layout, mm = _inputs(chunks)
        runner.execute(ids, pos, layout, torch.arange(1), mm, False)
    assert calls == [300]


def test_sizes():
    assert prefill_graph_sizes(1024) == [128, 256, 384, 512, 768, 1024]
    assert prefill_graph_sizes(300) == [128, 256, 300]
    assert prefill_graph_sizes(2048) == [128, 256, 384, 512, 768, 1024, 1536, 2048]
    assert prefill_graph_sizes(64) == [64]
    assert prefill_graph_sizes(0) == []


def test_unsupported_models(model):
    class NoStaticInputs:
        def forward(self, ids, positions, ctx, mm=None):
            return ids

    class Split:  # what Rank0Model shows of a tensor-parallel shard
        def __init__(self, inner):
            self.inner, self.tp = inner, object()

        def __getattr__(self, name):
            return getattr(self.inner, name)

    assert not supports_prefill_graphs(NoStaticInputs())
    assert not supports_prefill_graphs(Split(model))


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: records capture_begin / capture_end / replay."""

    events: list = []

    def __init__(self):
        self.i = sum(1 for e in self.events if e[0] == "new")
        self.events.append(("new", self.i))

    def capture_begin(self, pool=None):
        assert pool == "pool"
        self.events.append(("begin", self.i))

    def capture_end(self):
        self.events.append(("end", self.i))

    def replay(self):
        self.events.append(("replay", self.i))


class _FakeStream:
    def __init__(self, *a, **k):
        pass

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


def test_capture_cuts_once_per_layer_and_replay_interleaves_the_attention(model, monkeypatch):
    """The CUDA path's sequencing with fake graphs: per bucket L + 1 pieces, each begun and ended once, cut in layer
    order; a step replays piece 0, then per layer the attention and the next piece."""
    import contextlib

    _FakeGraph.events = events = []
    for name, value in (("CUDAGraph", _FakeGraph), ("graph_pool_handle", lambda: "pool"), ("Stream", _FakeStream),
                        ("current_stream", lambda *a: _FakeStream()), ("stream", lambda s: contextlib.nullcontext()),
                        ("synchronize", lambda *a: None), ("mem_get_info", lambda *a: (0, 0))):
        monkeypatch.setattr(torch.cuda, name, value)
    runner = ModelRunner(model, EngineConfig(block_size=BS, num_blocks=128, cuda_graphs=False), "cpu", 128)
    pg = PrefillGraphs(runner, MAX)
    layers = model.spec.num_layers
    assert sorted(pg.pieces) == [128, 256, 300]
    first = 0
    for bs in (300, 256, 128):  # largest first
        assert len(pg.pieces[bs]) == layers + 1 and pg.order[bs] == list(range(layers))
        assert pg.outputs[bs].shape == (bs, model.spec.hidden_size)
        ids = [g.i for g in pg.pieces[bs]]
        assert ids == list(range(first, first + layers + 1))
        want = [("new", ids[0]), ("begin", ids[0])]
        for i in ids[1:]:
            want += [("end", i - 1), ("new", i), ("begin", i)]
        got = [e for e in events if e[1] in ids]
        assert got == want + [("end", ids[-1])]
        first += layers + 1
    attend = pg._attend
    monkeypatch.setattr(pg, "_attend", lambda a, layer, n: events.append(("attend", layer)) or attend(a, layer, n))
    del events[:]
    seq = _Seq(model, 5, 200, image_at=10)
    ids, pos, layout, mm = _inputs([(seq, 0, 200)])
    hidden = pg.run(ids, pos, layout, mm)
    assert hidden.shape == (200, model.spec.hidden_size) and hidden.data_ptr() == pg.outputs[256].data_ptr()
    p = [g.i for g in pg.pieces[256]]
    want = [("replay", p[0])]
    for layer in range(layers):
        want += [("attend", layer), ("replay", p[layer + 1])]
    assert events == want
    assert torch.equal(pg.slots[200:256], torch.full((56,), -1)) and not pg.embeds[200:256].any()
    assert all(d[10:10 + seq.image[1].shape[0]].any() for d in pg.deep) and all(not d[:10].any() for d in pg.deep)

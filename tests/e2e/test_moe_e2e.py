"""The real server on a tiny Qwen3-VL-MoE checkpoint (transformers' own classes, the demo tokenizer) over TLS on
loopback: greedy tokens streamed through gRPC equal transformers' for text-only, one-image and two-image chats sent
at once."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm_service import types
from vlm_service._proto.vlm.v1 import vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.config import Config, EngineConfig, ModelConfig, ServerConfig, TLSConfig
from vlm_service.models.layers import seeded_weights_
from tests.server_harness import running_server
from vlm_service.server.tls import channel_credentials

MAX_TOKENS = 32


def write_tiny_moe_checkpoint(out: Path) -> Path:
    """A served checkpoint dir: config + weights (fused expert layout, one dense layer), tokenizer, preprocessor."""
    from tokenizers import Tokenizer
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    from vlm_service.processor.tokenizer import build_demo_tokenizer
    from vlm_service.processor.family_rules import write_preprocessor_config

    build_demo_tokenizer(out)
    write_preprocessor_config(out, "qwen3_vl")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = {k: tok.token_to_id(f"<|{k}|>") for k in ("image_pad", "video_pad", "vision_start", "vision_end", "im_end")}
    text = dict(vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=64, intermediate_size=96,
                moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, mlp_only_layers=[2],
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                max_position_embeddings=4096, eos_token_id=ids["im_end"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0])
    config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, image_token_id=ids["image_pad"],
                              video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
                              vision_end_token_id=ids["vision_end"], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen3VLMoeForConditionalGeneration(config).eval()
    seeded_weights_(model, 3, matrix=0.08, norm=0.1, bias=0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_moe_checkpoint(tmp_path_factory.mktemp("tiny_moe"))


@pytest.fixture(scope="module")
def moe_server(moe_checkpoint, pki, tmp_path_factory):
    pki, _ = pki
    cfg = Config(model=ModelConfig(model=str(moe_checkpoint), device="cpu", dtype="float32",
                                   vit_attention_backend="sdpa"),
                 engine=EngineConfig(num_blocks=256, max_num_seqs=8, cuda_graphs=False),
                 server=ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("moe_state"), warmup_image_side=64,
                                     tls=TLSConfig(cert=pki.server.cert, key=pki.server.key), drain_timeout_s=10))
    with running_server(cfg, credentials=channel_credentials(pki.ca.cert)) as srv:
        yield srv


def _png(w: int, h: int, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


CHATS = {
    "text_only": ("write a poem about the sea", []),
    "one_image": ("describe this image", [(96, 64, 1)]),
    "two_images_of_different_sizes": ("compare the two pictures", [(64, 128, 2), (160, 96, 3)]),
}


def _served_tokens(stub, prompt, pngs) -> list[int]:
    request = build_request(prompt, pngs, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [t for resp in stub.Generate(request, timeout=300) if resp.HasField("chunk") for t in resp.chunk.token_ids]


def _transformers_tokens(hf, processor, prompt, pngs) -> list[int]:
    """transformers' greedy tokens on the server's own preprocessing of the chat."""
    p = processor.process((types.ChatMessage("user", (*(types.ImageInput(b, "image/png") for b in pngs), prompt)),))
    ids = torch.tensor(p.input_ids)[None]
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
              mm_token_type_ids=(ids == hf.config.image_token_id).long())
    if p.visuals:
        kw.update(pixel_values=torch.cat([im.pixel_values for im in p.visuals]),
                  image_grid_thw=torch.tensor([im.grid_thw for im in p.visuals]))
    with torch.no_grad():
        out = hf.generate(**kw, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_served_greedy_tokens_equal_transformers(moe_server, moe_checkpoint):
    from transformers import Qwen3VLMoeForConditionalGeneration

    runtime = moe_server.server.runtime
    assert runtime.model.spec.architecture == "Qwen3VLMoeForConditionalGeneration"
    chats = {name: (prompt, [_png(*img) for img in images]) for name, (prompt, images) in CHATS.items()}
    channel = moe_server.channel()
    stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
    with ThreadPoolExecutor(len(chats)) as pool:  # all at once: the engine batches them
        futures = {name: pool.submit(_served_tokens, stub, *chat) for name, chat in chats.items()}
        served = {name: f.result() for name, f in futures.items()}
    channel.close()
    hf = Qwen3VLMoeForConditionalGeneration.from_pretrained(moe_checkpoint, dtype=torch.float32).eval()
    for name, chat in chats.items():
        assert len(served[name]) == MAX_TOKENS, name
        assert served[name] == _transformers_tokens(hf, runtime.processor, *chat), name

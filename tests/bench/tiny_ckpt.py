"""A tiny Qwen3-VL checkpoint directory for peer-mode tests: config (no weights: random), demo tokenizer and
preprocessor config."""

from pathlib import Path

from transformers import AutoTokenizer, Qwen3VLConfig

from vlm_service.processor.tokenizer import build_demo_tokenizer
from vlm_service.processor.family_rules import write_preprocessor_config


def write_tiny_qwen3_vl(folder: Path) -> Path:
    build_demo_tokenizer(folder)
    write_preprocessor_config(folder, "qwen3_vl")
    tok = AutoTokenizer.from_pretrained(folder)
    ids = {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in ("image_pad", "video_pad", "vision_start", "vision_end")}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         rope_parameters=rope),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"], architectures=["Qwen3VLForConditionalGeneration"])
    cfg.save_pretrained(folder)
    return folder

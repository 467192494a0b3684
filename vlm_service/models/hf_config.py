"""config.json (+ generation_config.json) of an HF-format checkpoint -> the one dict shape our model classes read.

Text fields flat or under "text_config"; rope as "rope_scaling" or "rope_parameters"; "vision_config" nested;
eos ids from generation_config.json when present. Plain JSON work, no torch: the loader (models/loader.py) and the
demo / random checkpoints (vlm_service/demo/) both use it. Every failure is a ModelLoadError naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_service.errors import ModelLoadError

_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or ModelLoadError naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _rope_parameters(text: dict) -> dict:
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope.setdefault("rope_theta", text.get("rope_theta", 10000.0))
    rope_type = rope.pop("type", None) or rope.get("rope_type") or "default"
    rope["rope_type"] = "default" if rope_type == "mrope" else rope_type
    rope["mrope_interleaved"] = bool(rope.get("mrope_interleaved", False))
    return rope


def _eos_ids(raw: dict, text: dict, generation: dict | None) -> list[int]:
    eos = (generation or {}).get("eos_token_id")
    if eos is None:
        eos = raw.get("eos_token_id", text.get("eos_token_id"))
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def normalize_config(raw: dict, generation: dict | None = None) -> dict:
    """config.json contents -> the one shape model classes read (see registry.py)."""
    text = {k: v for k, v in raw.items() if k not in ("text_config", "vision_config")}
    text.update(raw.get("text_config") or {})
    text["rope_parameters"] = _rope_parameters(text)
    text.pop("rope_scaling", None)
    out = {
        "architectures": list(raw.get("architectures") or []),
        "model_type": raw.get("model_type"),
        "text_config": text,
        "vision_config": dict(raw.get("vision_config") or {}),
        "tie_word_embeddings": bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        "eos_token_ids": _eos_ids(raw, text, generation),
    }
    for key in _TOKEN_KEYS:
        if key in raw or key in text:
            out[key] = int(raw.get(key, text.get(key)))
    return out


def read_config(path: str | Path) -> dict:
    """Read and normalize config.json (+ generation_config.json when present) of a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: checkpoint directory not found")
    raw = read_json(path / "config.json")
    gen_path = path / "generation_config.json"
    generation = read_json(gen_path) if gen_path.is_file() else None
    return normalize_config(raw, generation)


def architecture_of(config: dict, path: Path) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise ModelLoadError(f"{path / 'config.json'}: no 'architectures' entry")
    return archs[0]

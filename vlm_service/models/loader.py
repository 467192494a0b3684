"""Load an HF-format checkpoint directory into one of our model classes.

What it reads: config.json and generation_config.json (normalized by models/hf_config.py, whose names are
re-exported here), and the weights as one model.safetensors or shards listed in model.safetensors.index.json.
Tensors are streamed one at a time, renamed to the canonical (transformers-5) layout and copied into the model,
which casts them to its dtype and device.

Key layouts: the hub layout (`model.layers.*`, `model.embed_tokens.*`, `model.norm.*`, `visual.*`) is mapped onto
the canonical one (`model.language_model.*`, `model.visual.*`); `lm_head.weight` is the same in both. MoE expert
tensors (per expert, fused, or fused transposed) are told apart by the model's own load_weights (qwen3_vl_moe.py).

Every failure is a ModelLoadError with a one-line message naming the file (and tensor) at fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from vlm_service.errors import ModelLoadError
# normalize_config, read_config and read_json are re-exported (tests and older callers import them from here)
from vlm_service.models.hf_config import architecture_of, normalize_config, read_config, read_json  # noqa: F401
from vlm_service.models.parallel import fit_slice, shard_slices
from vlm_service.models.registry import model_class

_INDEX = "model.safetensors.index.json"


def canonical_name(name: str) -> str:
    """Map a hub-layout tensor name to the canonical transformers-5 name (canonical names pass unchanged)."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + name[len("model."):]
    return name


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint, in order; ModelLoadError when none or a listed shard is missing."""
    index = path / _INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no 'weight_map'")
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{path}: no *.safetensors weights and no {_INDEX}")
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{f}: shard listed in {_INDEX} is missing")
    return files


class _Cursor:
    """Where the tensor stream is, so an error from the model can name the file."""

    file: Path | None = None
    tensor: str | None = None


def _read(handle, name: str, canonical: str, slices: dict) -> torch.Tensor:
    """The whole tensor, or only this rank's slice of it (safetensors reads just those bytes)."""
    if canonical not in slices:
        return handle.get_tensor(name)
    spec, part = slices[canonical], handle.get_slice(name)
    if hasattr(spec, "read"):  # a slice the model describes itself (e.g. moe_parallel.FusedExpertSlice)
        return spec.read(part, name)
    dim, start, stop, rows = spec
    return fit_slice(part[start:stop] if dim == 0 else part[:, start:stop], rows, dim)


def iter_tensors(files: list[Path], cursor: _Cursor | None = None,
                 slices: dict | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (canonical name, CPU tensor) from safetensors files; ModelLoadError names a corrupt file/tensor.
    `slices` (canonical name -> (dim, start, stop, rows), or an object with read(part, name), models/parallel.
    shard_slices) reads a tensor-parallel rank's slice of those tensors instead of the whole."""
    from safetensors import SafetensorError, safe_open

    cursor, slices = cursor or _Cursor(), slices or {}
    for f in files:
        cursor.file = f
        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{f}: corrupt or truncated safetensors file ({e})") from None
        with handle:
            for name in handle.keys():
                cursor.tensor = name
                try:
                    tensor = _read(handle, name, canonical_name(name), slices)
                except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                    raise ModelLoadError(f"{f}: cannot read tensor {name!r} ({e})") from None
                yield canonical_name(name), tensor


def load_model(path: str | Path, dtype: torch.dtype, device: torch.device | str, vit_attention, tp=None):
    """Build the model of the checkpoint at `path` on `device` in `dtype`, with its weights loaded.

    vit_attention: a vit_backends.base.ViTAttention. Raises ModelLoadError (file and tensor named) on an unknown
    architecture, a missing shard, a corrupt or truncated safetensors file, a missing/unexpected tensor or a shape
    mismatch. A `random:<preset>` path builds that preset with random weights (vlm_service/demo/presets.py).
    `tp` (models/parallel.TensorParallel, size > 1) builds this rank's shard and reads only its slices.
    """
    from vlm_service.demo import presets

    if presets.is_random(path):
        return presets.build_random_model(str(path), dtype, device, vit_attention, **({"tp": tp} if tp else {}))
    path = Path(path)
    config = read_config(path)
    cls = model_class(architecture_of(config, path))
    try:
        model = cls(config, dtype, torch.device(device), vit_attention, **({"tp": tp} if tp else {}))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path / 'config.json'}: missing or invalid field ({type(e).__name__}: {e})") from None
    files = weight_files(path)
    cursor = _Cursor()
    try:
        model.load_weights(iter_tensors(files, cursor, shard_slices(model) if tp else None))
    except ModelLoadError as e:
        where = cursor.file if "missing tensor" not in str(e) else path
        if str(where) in str(e):
            raise
        raise ModelLoadError(f"{where}: {e}") from None
    return model.eval() if hasattr(model, "eval") else model

"""Registry: lazy factories, clear errors for unknown names and missing GPU packages, usable() on this machine."""

import sys
import types

import pytest
import torch

import vit_backends
from vit_backends import MissingBackendError, available, create, usable
from vit_backends.base import import_optional


def test_available_lists_every_backend():
    assert available() == ["auto", "fa3", "flashinfer_cudnn", "sdpa"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown ViT attention backend 'flash'.*auto, fa3, flashinfer_cudnn, sdpa"):
        create("flash")


@pytest.mark.parametrize("backend, module", [("fa3", "fa3_fwd_interface"), ("flashinfer_cudnn", "cudnn"),
                                             ("flashinfer_cudnn", "flashinfer.cudnn")])
def test_missing_package_names_module_and_extra(monkeypatch, backend, module):
    if module == "flashinfer.cudnn":  # cuDNN frontend present, FlashInfer absent
        monkeypatch.setitem(sys.modules, "cudnn", types.ModuleType("cudnn"))
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if it were not installed
    with pytest.raises(MissingBackendError) as info:
        create(backend)
    message = str(info.value)
    assert isinstance(info.value, ImportError)
    assert f"'{module}'" in message and "pip install 'vlm-service[gpu]'" in message and backend in message


def test_package_that_fails_to_load_says_so(tmp_path, monkeypatch):
    (tmp_path / "broken_gpu_pkg.py").write_text("raise OSError('libcudart.so.13: cannot open shared object file')")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingBackendError, match="failed to load .*libcudart.*vlm-service\\[gpu\\]"):
        import_optional("fa3", "broken_gpu_pkg")


def test_creating_sdpa_needs_no_gpu_package(monkeypatch):
    for module in ("fa3_fwd_interface", "flashinfer", "cudnn"):
        monkeypatch.setitem(sys.modules, module, None)
    assert create("sdpa").name == "sdpa" and create("auto").name == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only expectations")
def test_usable_on_cpu_is_sdpa_and_auto():
    assert usable() == ["auto", "sdpa"]


def test_usable_needs_the_packages(monkeypatch):
    monkeypatch.setattr(vit_backends, "_hopper", lambda: True)
    monkeypatch.setattr(vit_backends.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(vit_backends, "_has", lambda module: module == "fa3_fwd_interface")
    assert usable() == ["auto", "fa3", "sdpa"]
    monkeypatch.setattr(vit_backends, "_has", lambda module: module in ("flashinfer", "cudnn"))
    assert usable() == ["auto", "flashinfer_cudnn", "sdpa"]


def _fake_fa3(monkeypatch, fp16_disabled):
    interface, config = types.ModuleType("fa3_fwd_interface"), types.ModuleType("fa3_fwd_config")
    config.CONFIG = {"build_flags": {"FLASHATTENTION_DISABLE_FP16": fp16_disabled}}
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", interface)
    monkeypatch.setitem(sys.modules, "fa3_fwd_config", config)


def test_fa3_refuses_fp16_when_the_build_lacks_it(monkeypatch):
    _fake_fa3(monkeypatch, fp16_disabled=True)  # as fa3-fwd 0.0.3 is built
    backend = create("fa3")
    q = torch.zeros(4, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="runs bfloat16 only .* got float16"):
        backend(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4)
    assert not backend.supports(torch.device("cpu"), torch.bfloat16, 64)


def test_fa3_needs_cuda(monkeypatch):
    _fake_fa3(monkeypatch, fp16_disabled=False)
    q = torch.zeros(4, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="needs a CUDA"):
        create("fa3")(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4)

"""GpuPreprocessor's routing and fallbacks, run on a CPU device with a stand-in for torchvision's decode_jpeg."""

import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_corpus import corpus, encode, exif_rotated_jpeg, real_looking
from vlm_service.config import ModelConfig
from vlm_service.errors import InvalidImage
from vlm_service.processor.gpu_preprocess import GpuPreprocessor, gpu_jpeg_mode, resolve_preprocess_device
from vlm_service.processor.image import decode_image, open_checked
from vlm_service.processor.processor import Processor
from vlm_service.processor.vision import ImageConfig, preprocess_image
from vlm_service.types import ChatMessage, ImageInput

CFG = ImageConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 300)
MODES = types.SimpleNamespace(RGB="RGB", GRAY="GRAY")
LIMIT = 10**7


class FakeDecoder:
    """decode_jpeg(raw uint8 [N], mode, device) -> uint8 [C, H, W] like torchvision's, decoded by PIL here."""

    def __init__(self, fail: bool = False, wrong_shape: bool = False):
        self.calls, self.fail, self.wrong_shape = [], fail, wrong_shape

    def __call__(self, raw, mode, device):
        self.calls.append(mode)
        if self.fail:
            raise RuntimeError("nvjpeg says no")
        img = Image.open(io.BytesIO(raw.numpy().tobytes())).convert("RGB" if mode == "RGB" else "L")
        arr = np.asarray(img)
        out = torch.from_numpy(arr.copy()).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr.copy())[None]
        return out[:, 1:] if self.wrong_shape else out.contiguous()


def _pre(decoder=None, dtype=torch.float32):
    return GpuPreprocessor(CFG, "cpu", dtype, jpeg_decoder=(decoder, MODES) if decoder else None, warm_up=False)


def _cpu(data, mime, dtype=torch.float32):
    return preprocess_image(decode_image(data, mime, LIMIT, "f"), CFG, dtype)


def _levels_close(got, want):
    step = 1 / (255 * min(CFG.image_std))
    return (got.float() - want.float()).abs().max().item() <= 1.001 * step


def _mode_of(data):
    img = open_checked(data, "", LIMIT, "f")
    try:
        return gpu_jpeg_mode(img, data)
    finally:
        img.close()


def test_which_jpegs_go_to_the_gpu():
    names = {name: _mode_of(data) for name, data, _ in corpus(sizes=[(64, 96)])}
    assert names["jpeg-64x96"] == "RGB" and names["jpeg-progressive"] == "RGB" and names["jpeg-444"] == "RGB"
    assert names["jpeg-gray"] == "GRAY"
    for host in ("jpeg-exif-rotated", "jpeg-cmyk", "png-64x96", "webp", "png-rgba", "png-palette", "gif"):
        assert names[host] is None, host
    plain = encode(Image.fromarray(real_looking(40, 50, 1)), "JPEG")
    assert _mode_of(plain[:-2] + b"\x00\x00") is None  # no EOI: truncated
    assert _mode_of(exif_rotated_jpeg(real_looking(40, 50, 1), orientation=1)) == "RGB"  # orientation 1: no turn


def test_corpus_matches_the_cpu_path_within_a_level():
    fake = FakeDecoder()
    pre = _pre(fake)
    for name, data, mime in corpus(sizes=[(57, 91), (4, 800), (333, 517)]):
        got, grid = pre(data, mime, LIMIT, "f")
        want, want_grid = _cpu(data, mime)
        assert grid == want_grid and got.shape == want.shape, name
        assert _levels_close(got, want), name  # the stand-in decodes like PIL: only the resize differs
    assert pre.images["gpu_jpeg"] == len(fake.calls) == 3 + 3  # 3 sizes + progressive, 4:4:4, gray
    assert pre.images["host_decode"] > 0 and pre.images["cpu_fallback"] == 0


@pytest.mark.parametrize("decoder", [FakeDecoder(fail=True), FakeDecoder(wrong_shape=True)])
def test_a_failing_gpu_decode_falls_back_to_the_host(decoder):
    pre = _pre(decoder)
    data = encode(Image.fromarray(real_looking(70, 90, 2)), "JPEG")
    got, grid = pre(data, "image/jpeg", LIMIT, "f")
    want, want_grid = _cpu(data, "image/jpeg")
    assert grid == want_grid and _levels_close(got, want)
    assert decoder.calls and pre.images == {"gpu_jpeg": 0, "host_decode": 1, "cpu_fallback": 0}


def test_bad_images_raise_as_on_the_cpu_path():
    pre = _pre(FakeDecoder())
    jpeg = encode(Image.fromarray(real_looking(70, 90, 2)), "JPEG")
    with pytest.raises(InvalidImage, match="declared mime type") as exc:
        pre(jpeg, "image/png", LIMIT, "messages[0].content[1].image")
    assert exc.value.field == "messages[0].content[1].image"
    with pytest.raises(InvalidImage, match="over the limit"):
        pre(jpeg, "", 100, "f")
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        pre(jpeg[: len(jpeg) // 2], "", LIMIT, "f")
    with pytest.raises(InvalidImage):
        pre(b"\xff\xd8\xff" + b"\x00" * 40, "", LIMIT, "f")


def test_bf16_output_and_exif_rotation():
    pre = _pre(FakeDecoder(), dtype=torch.bfloat16)
    data = exif_rotated_jpeg(real_looking(60, 100, 4))  # orientation 6: the CPU path turns it to 100 x 60
    got, grid = pre(data, "", LIMIT, "f")
    want, want_grid = _cpu(data, "", torch.bfloat16)
    assert got.dtype == torch.bfloat16 and grid == want_grid and grid[1] > grid[2]
    # bf16 of values one level apart differ by at most one level plus one bf16 rounding of |v| < 2.2
    assert (got.float() - want.float()).abs().max().item() <= 1 / (255 * min(CFG.image_std)) + 2 ** -6


def test_warm_up_switches_off_a_failing_gpu_jpeg_decoder():
    ok = GpuPreprocessor(CFG, "cpu", torch.float32, jpeg_decoder=(FakeDecoder(), MODES))
    bad = GpuPreprocessor(CFG, "cpu", torch.float32, jpeg_decoder=(FakeDecoder(fail=True), MODES))
    assert ok.jpeg is not None and bad.jpeg is None
    assert ok.images == bad.images == {"gpu_jpeg": 0, "host_decode": 0, "cpu_fallback": 0}


def test_resolve_preprocess_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda:1")
    assert resolve_preprocess_device("auto", cpu) is None and resolve_preprocess_device("cpu", cuda) is None
    # auto stays on the host until the nvJPEG tolerance holds (see resolve_preprocess_device)
    assert resolve_preprocess_device("auto", cuda) is None and resolve_preprocess_device("cuda", cuda) == cuda
    with pytest.raises(ValueError, match="needs the model on CUDA"):
        resolve_preprocess_device("cuda", cpu)
    with pytest.raises(ValueError, match="preprocess_device"):
        ModelConfig(preprocess_device="gpu")


def test_processor_uses_the_gpu_preprocessor(model_dir):
    # the hook as the server builds it (the device is CPU here, torchvision absent: JPEG decoded on the host)
    host = Processor.from_pretrained(model_dir)
    dev = Processor.from_pretrained(model_dir, preprocess_device=torch.device("cpu"))
    assert host.gpu_preprocessor is None and dev.gpu_preprocessor is not None
    data = encode(Image.fromarray(real_looking(100, 150, 7)), "PNG")
    msgs = (ChatMessage("user", (ImageInput(data, "image/png"), "describe")),)
    a, b = host.process(msgs), dev.process(msgs)
    assert a.input_ids == b.input_ids and torch.equal(a.positions, b.positions)
    (ia,), (ib,) = a.images, b.images
    assert ia.grid_thw == ib.grid_thw and ia.content_hash == ib.content_hash and ia.offset == ib.offset
    step = 1 / (255 * min(host.image_config.image_std))
    assert (ia.pixel_values - ib.pixel_values).abs().max().item() <= 1.001 * step
    assert dev.gpu_preprocessor.images["host_decode"] == 1


def test_flag_and_env(monkeypatch):
    import argparse

    from vlm_service.server.options import add_serve_flags, config_from_args

    def parse(argv):
        parser = argparse.ArgumentParser()
        add_serve_flags(parser)
        return config_from_args(parser.parse_args(argv)).model.preprocess_device

    assert parse([]) == "auto"
    assert parse(["--preprocess-device", "cpu"]) == "cpu"
    monkeypatch.setenv("VLM_PREPROCESS_DEVICE", "cuda")
    assert parse([]) == "cuda" and parse(["--preprocess-device", "cpu"]) == "cpu"
    with pytest.raises(SystemExit):  # argparse's choices: exit 2, "invalid choice"
        parse(["--preprocess-device", "tpu"])
    monkeypatch.setenv("VLM_PREPROCESS_DEVICE", "tpu")  # env values bypass argparse: the config refuses them
    with pytest.raises(ValueError, match="preprocess_device"):
        parse([])

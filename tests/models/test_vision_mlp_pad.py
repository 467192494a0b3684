"""VisionMLP.pad_intermediate_: zero padding of Qwen2.5-VL's odd MLP width must not change the MLP."""

import torch

from vlm_service.models.qwen2_5_vl_vision import VisionMLP


def test_padding_keeps_the_output_and_survives_reinit():
    torch.manual_seed(0)
    mlp = VisionMLP(32, 90)
    for p in mlp.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(7, 32)
    before = mlp(x)
    mlp.pad_intermediate_(64)
    assert mlp.gate_up_proj.weight.shape == (256, 32) and mlp.down_proj.weight.shape == (32, 128)
    assert torch.allclose(mlp(x), before, rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # something writes the pads (a re-init): padding again zeroes them
        mlp.gate_up_proj.weight.fill_(1.0)
        mlp.down_proj.weight.fill_(1.0)
    mlp.pad_intermediate_(64)
    assert mlp.down_proj.weight[:, 90:].abs().sum() == 0 and mlp.gate_up_proj.weight[90:128].abs().sum() == 0
    assert set(mlp.gate_up_proj.slots("mlp.")) == {"mlp.gate_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.weight",
                                                   "mlp.up_proj.bias"}
    assert mlp.gate_up_proj.slots("mlp.")["mlp.up_proj.weight"].data_ptr() == mlp.gate_up_proj.weight[128].data_ptr()


def test_aligned_width_is_left_alone():
    mlp = VisionMLP(16, 128)
    w = mlp.gate_up_proj.weight
    mlp.pad_intermediate_(64)
    assert mlp.gate_up_proj.weight is w and mlp.down_proj.in_features == 128

"""flashinfer_cudnn's padding trick, on CPU: empty segments to a power-of-two batch, max_seqlen buckets."""

import torch

from vit_backends.flashinfer_cudnn import bucket_batch, bucket_seqlen, make_plan


def test_batch_and_seqlen_buckets():
    assert [bucket_batch(n) for n in (1, 2, 3, 5, 8, 9, 361)] == [1, 2, 4, 8, 8, 16, 512]
    assert [bucket_seqlen(n) for n in (1, 64, 65, 784, 1024, 5476)] == [64, 64, 128, 1024, 1024, 8192]


def test_plan_pads_with_empty_segments_at_the_end():
    plan = make_plan(torch.tensor([0, 3, 10, 12], dtype=torch.int32), row_elems=16 * 80)
    assert plan.batch == 4
    assert plan.lengths.shape == (4, 1, 1, 1) and plan.offsets.shape == (5, 1, 1, 1)
    assert plan.lengths.flatten().tolist() == [3, 7, 2, 0]
    assert plan.offsets.flatten().tolist() == [0, 3 * 1280, 10 * 1280, 12 * 1280, 12 * 1280]
    assert plan.offsets.dtype == plan.lengths.dtype == torch.int32


def test_two_shapes_of_one_bucket_share_the_graph_batch():
    a = make_plan(torch.tensor([0, 100, 300, 600], dtype=torch.int32), 1)
    b = make_plan(torch.tensor([0, 50, 110, 180, 436], dtype=torch.int32), 1)
    assert a.batch == b.batch == 4

import pytest
import torch

from vlm_service.processor.positions import image_offsets, mrope_positions

PAD, START, END = 9, 7, 8


def test_text_only_positions_are_arange():
    positions, delta = mrope_positions([1, 2, 3, 4], [], PAD, START, 2)
    assert torch.equal(positions, torch.arange(4).expand(3, -1)) and delta == 0


def test_one_image_between_text_by_hand():
    # text(2) <start> image grid (1, 4, 6) -> 2 x 3 merged tokens <end> text(1)
    ids = [1, 2, START] + [PAD] * 6 + [END, 3]
    positions, delta = mrope_positions(ids, [(1, 4, 6)], PAD, START, 2)
    assert positions[:, :3].tolist() == [[0, 1, 2]] * 3
    assert positions[0, 3:9].tolist() == [3] * 6  # t: one frame
    assert positions[1, 3:9].tolist() == [3, 3, 3, 4, 4, 4]  # h: rows
    assert positions[2, 3:9].tolist() == [3, 4, 5, 3, 4, 5]  # w: columns
    assert positions[:, 9:].tolist() == [[6, 7]] * 3  # resumes at 3 + max(2, 3)
    assert delta == 8 - len(ids)


def test_adjacent_images_share_one_pad_run():
    ids = [START] + [PAD] * 4 + [PAD] * 2 + [END]
    grids = [(1, 4, 4), (1, 2, 4)]
    assert image_offsets(ids, grids, PAD, 2) == [1, 5]
    positions, _ = mrope_positions(ids, grids, PAD, START, 2)
    assert positions[:, 5].tolist() == [3, 3, 3]  # second image starts after the first (1 + max(2, 2))


def test_mismatched_grids_are_our_bug():
    with pytest.raises(AssertionError):
        mrope_positions([START, PAD, PAD, END], [(1, 4, 4)], PAD, START, 2)

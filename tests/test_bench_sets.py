"""Which responses of a set the benchmark's K-response sets keep (rmlab/bench/sets.py): no training."""

from __future__ import annotations

from rmlab.bench.sets import k_responses


def test_k_responses_keeps_the_shortest_of_distinct_scores_in_the_sets_order():
    response_set = {"prompt": "p", "responses": ["ccc", "a", "bb", "dddd", "e", "ffffff"], "scores": [0.1, 0.5, 0.5, 0.9, 0.2, 0.3]}
    # by length: a (0.5), e (0.2), bb (0.5: a score taken), ccc (0.1), dddd (0.9), ...
    assert k_responses(response_set, 3) == {"prompt": "p", "responses": ["ccc", "a", "e"], "scores": [0.1, 0.5, 0.2]}
    assert k_responses(response_set, 5) == {"prompt": "p", "responses": ["ccc", "a", "dddd", "e", "ffffff"],
                                            "scores": [0.1, 0.5, 0.9, 0.2, 0.3]}
    assert k_responses(response_set, 6) is None  # five distinct scores

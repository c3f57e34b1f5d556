"""Full-ranking metrics against hand-derived values and a brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch

from fenrec_dist.metrics import finalize, merge, rank_metrics, scores_ranks, target_ranks, topk_items

CHUNKS = [1, 2, 7, 16, 10_000]


def _one(rank: int) -> dict[str, float]:
    return finalize(rank_metrics(torch.tensor([rank])))


# ---------------------------------------------------------------- rank -> metric values

def test_rank_zero_is_a_perfect_hit():
    assert _one(0) == {"HR@5": 1.0, "HR@10": 1.0, "HR@20": 1.0,
                       "NDCG@5": 1.0, "NDCG@10": 1.0, "NDCG@20": 1.0, "MRR": 1.0}


def test_rank_one_ndcg_is_one_over_log2_3():
    m = _one(1)
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(3)) == pytest.approx(0.6309297535714574)
    assert m["NDCG@20"] == pytest.approx(0.6309297535714574)
    assert m["HR@5"] == 1.0 and m["MRR"] == 0.5


def test_cutoff_boundaries():
    m4, m5, m9, m10, m19, m20 = (_one(r) for r in (4, 5, 9, 10, 19, 20))
    # rank 4 is the last hit of @5: NDCG = 1/log2(6)
    assert m4["HR@5"] == 1.0 and m4["NDCG@5"] == pytest.approx(1 / math.log2(6))
    # rank 5 is past @5, inside @10
    assert m5["HR@5"] == 0.0 and m5["NDCG@5"] == 0.0
    assert m5["HR@10"] == 1.0 and m5["NDCG@10"] == pytest.approx(1 / math.log2(7))
    assert m9["HR@10"] == 1.0 and m9["NDCG@10"] == pytest.approx(1 / math.log2(11))
    assert m10["HR@10"] == 0.0 and m10["NDCG@10"] == 0.0 and m10["HR@20"] == 1.0
    assert m19["HR@20"] == 1.0 and m19["NDCG@20"] == pytest.approx(1 / math.log2(21))
    assert all(m20[k] == 0.0 for k in m20 if k != "MRR")
    assert m20["MRR"] == pytest.approx(1 / 21)  # MRR has no cut-off
    assert m4["MRR"] == pytest.approx(0.2)


def test_rank_metrics_are_sums_and_custom_ks():
    s = rank_metrics(torch.tensor([0, 1, 3, 30]), ks=[3, 1])
    assert set(s) == {"HR@1", "HR@3", "NDCG@1", "NDCG@3", "MRR", "count"}
    assert s["count"] == 4.0
    assert s["HR@1"] == 1.0 and s["HR@3"] == 2.0
    assert s["NDCG@3"] == pytest.approx(1 + 1 / math.log2(3))
    assert s["MRR"] == pytest.approx(1 + 1 / 2 + 1 / 4 + 1 / 31)


def test_merge_and_finalize():
    ranks = torch.tensor([0, 2, 7, 12, 50, 1])
    whole = rank_metrics(ranks)
    parts = merge(merge({}, rank_metrics(ranks[:2])), rank_metrics(ranks[2:]))
    assert parts.keys() == whole.keys()
    for k in whole:
        assert parts[k] == pytest.approx(whole[k])
    fin = finalize(parts)
    assert "count" not in fin
    assert fin["HR@10"] == pytest.approx(4 / 6)
    assert fin["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 8 + 1 / 13 + 1 / 51 + 1 / 2) / 6)
    assert list(fin) == ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"]
    empty = finalize(rank_metrics(torch.zeros(0, dtype=torch.long)))
    assert all(math.isnan(v) for v in empty.values())


# ---------------------------------------------------------------- ranks on a hand example

def _hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """query [1, 2], items 0..5 with scores: pad 100, 1->5, 2->3, 3->4, 4->1, 5->2."""
    q = torch.tensor([[1.0, 0.0]])
    emb = torch.tensor([[100.0, 0], [5, 0], [3, 0], [4, 0], [1, 0], [2, 0]])
    return q, emb


def _both(q, emb, targets, ex):
    """Ranks from the reference and from target_ranks at every chunk size (asserted equal)."""
    ref = scores_ranks(q @ emb.T, targets, ex)
    for c in CHUNKS:
        assert torch.equal(target_ranks(q, emb, targets, ex, item_chunk=c), ref), c
    return ref.tolist()


def test_padding_never_ranked_even_when_it_scores_highest():
    q, emb = _hand_example()
    # target 3 (score 4): only item 1 (score 5) is higher; padding (100) never counts
    assert _both(q, emb, torch.tensor([3]), torch.zeros(1, 1, dtype=torch.long)) == [1]
    assert _both(q, emb, torch.tensor([4]), torch.zeros(1, 3, dtype=torch.long)) == [4]


def test_history_items_do_not_count():
    q, emb = _hand_example()
    assert _both(q, emb, torch.tensor([3]), torch.tensor([[1, 0, 0]])) == [0]  # right-padded
    assert _both(q, emb, torch.tensor([4]), torch.tensor([[0, 1, 3]])) == [2]  # left-padded: 2, 5 remain higher
    assert _both(q, emb, torch.tensor([4]), torch.tensor([[1, 1, 3, 3]])) == [2]  # repeated ids


def test_target_in_history_is_still_ranked():
    q, emb = _hand_example()
    assert _both(q, emb, torch.tensor([3]), torch.tensor([[3, 1]])) == [0]
    assert _both(q, emb, torch.tensor([2]), torch.tensor([[2, 0]])) == [2]  # 1 and 3 above


def test_ties_count_in_the_targets_favour():
    q, emb = _hand_example()
    emb[5] = torch.tensor([4.0, 0])  # item 5 now ties with target 3
    assert _both(q, emb, torch.tensor([3]), torch.zeros(1, 1, dtype=torch.long)) == [1]
    assert _both(q, emb, torch.tensor([5]), torch.zeros(1, 1, dtype=torch.long)) == [1]


def test_negative_scores_need_minus_inf_exclusion():
    # all scores negative: item 1 -> -0.5 (history), target 2 -> -1, item 3 -> -2, item 4 -> -3
    q = torch.tensor([[-1.0]])
    emb = torch.tensor([[0.0], [0.5], [1.0], [2.0], [3.0]])
    targets, ex = torch.tensor([2]), torch.tensor([[1]])
    assert _both(q, emb, targets, ex) == [0]
    # the reference code's masking (excluded scores set to 0) ranks the history item above
    zeroed = (q @ emb.T).clone()
    zeroed[0, 1] = 0.0
    zeroed[0, 0] = float("-inf")
    assert int((zeroed[0] > zeroed[0, 2]).sum()) == 1


def _brute_rank(scores_row: list[float], target: int, history: set[int]) -> int:
    t = scores_row[target]
    return sum(1 for i in range(1, len(scores_row)) if i != target and i not in history and scores_row[i] > t)


@pytest.mark.parametrize("chunk", CHUNKS + [51, 52])
def test_chunked_ranks_match_reference_on_random_data(chunk):
    g = torch.Generator().manual_seed(chunk)
    b, n_items, d, h = 13, 51, 8, 9
    q = torch.randn(b, d, generator=g, dtype=torch.float64)
    emb = torch.randn(n_items + 1, d, generator=g, dtype=torch.float64)
    targets = torch.randint(1, n_items + 1, (b,), generator=g)
    ex = torch.randint(1, n_items + 1, (b, h), generator=g)
    ex[::2, 6:] = 0  # right padding
    ex[1::3, :4] = 0  # left padding
    ex[0, 0] = targets[0]  # a target inside its own history
    ref = scores_ranks(q @ emb.T, targets, ex)
    got = target_ranks(q, emb, targets, ex, item_chunk=chunk)
    assert got.dtype == torch.long and torch.equal(got, ref)
    s = (q @ emb.T).tolist()
    brute = [_brute_rank(s[r], int(targets[r]), {int(x) for x in ex[r]} - {0}) for r in range(b)]
    assert got.tolist() == brute


def test_float32_and_half_queries():
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-3, 4, (6, 4), generator=g).float()  # small integers: exact dot products
    emb = torch.randint(-3, 4, (30, 4), generator=g).float()
    targets = torch.randint(1, 30, (6,), generator=g)
    ex = torch.randint(0, 30, (6, 5), generator=g)
    ref = scores_ranks(q @ emb.T, targets, ex)
    assert torch.equal(target_ranks(q, emb, targets, ex, item_chunk=4), ref)
    assert torch.equal(target_ranks(q.half(), emb.half(), targets, ex, item_chunk=4), ref)


# ---------------------------------------------------------------- top-k

@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_topk_matches_brute_force_sort(chunk):
    g = torch.Generator().manual_seed(10 + chunk)
    b, n_items, d, k = 7, 40, 6, 10
    q = torch.randn(b, d, generator=g, dtype=torch.float64)
    emb = torch.randn(n_items + 1, d, generator=g, dtype=torch.float64)
    emb[0] = q.mean(0) * 100  # padding would win every ranking
    ex = torch.randint(0, n_items + 1, (b, 12), generator=g)
    scores, ids = topk_items(q, emb, ex, k, item_chunk=chunk)
    full = (q @ emb.T).tolist()
    for r in range(b):
        hist = {int(x) for x in ex[r]}
        expect = sorted((i for i in range(1, n_items + 1) if i not in hist), key=lambda i: -full[r][i])[:k]
        assert ids[r].tolist() == expect
        assert scores[r].tolist() == pytest.approx([full[r][i] for i in expect])


def test_topk_with_fewer_rankable_items_than_k():
    q = torch.tensor([[1.0]])
    emb = torch.tensor([[9.0], [1.0], [2.0], [3.0]])
    scores, ids = topk_items(q, emb, torch.tensor([[2, 0]]), k=4, item_chunk=2)
    assert ids.tolist() == [[3, 1, 0, 0]]
    assert scores[0, :2].tolist() == [3.0, 1.0] and torch.isneginf(scores[0, 2:]).all()

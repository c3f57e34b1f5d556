"""Global negatives: 2 gloo workers at batch B equal 1 process at batch 2B."""

from __future__ import annotations

import pytest

import dist_harness as selfcheck


@pytest.mark.parametrize("world,batch", [(2, 16), (2, 10)])
def test_two_workers_equal_one_process_on_the_global_batch(world, batch):
    d = selfcheck.compare(world, batch)
    assert d["grad_keys_match"] == 1.0
    assert d["coarse"] < 1e-5 and d["fine"] < 1e-5
    assert d["grad"] < 1e-5


def test_without_world_scaling_gradients_would_differ():
    """The W-scaling of the contrastive objective is what makes the gradients agree."""
    s_parts, s_grads = selfcheck.single_process(16)
    # Rec-only gradient differs from the full one, so the check above is sensitive to the scaling.
    loss = selfcheck._loss(1)
    loss.loss_cfg.lambda_coarse = 0.0
    loss.loss_cfg.beta_fine = 0.0
    ids, target, future, flen, intents = selfcheck._problem(16)
    _, rec_grads = selfcheck._step(selfcheck._model(), loss, ids[:16], ids[16:], target, future, flen, intents)
    assert max(float((s_grads[n] - rec_grads[n]).abs().max()) for n in s_grads) > 1e-4


def test_distributed_evaluation_equals_single_process(tiny_data):
    single, dist_res = selfcheck.compare_eval(str(tiny_data), world=2)
    for split in ("valid", "test"):
        assert set(single[split]) == set(dist_res[split])
        for k, v in single[split].items():
            assert dist_res[split][k] == pytest.approx(v, abs=1e-9), (split, k)
        assert 0 < single[split]["HR@20"] <= 1


def test_intents_clustered_once_across_ranks_agree_with_one_process():
    import torch

    # k-means sharded across the ranks (no rank holds the others' points) against one process's
    # faiss.Kmeans on all of them: same initial points, same iterations; the per-cluster sums are
    # added in another order, so the centroids agree to float rounding and the ranks bit for bit.
    ref, ranks = selfcheck.compare_intents(world=2)
    assert torch.equal(ranks[0]["centroids"], ranks[1]["centroids"])
    for r in ranks:
        torch.testing.assert_close(r["centroids"], ref["centroids"], rtol=0, atol=2e-5)
        assert torch.equal(r["assign"], ref["assign"])


def test_packed_gather_rows_offsets_and_summed_gradients():
    """One collective gathers a float and an int64 tensor of uneven row counts bit-exactly;
    each row's gradient is the sum of what every rank's loss sent it."""
    import torch

    world = 2
    ranks = selfcheck.check_gather(world)
    want_f = torch.cat([selfcheck._gather_rows(r)[0] for r in range(world)])
    want_i = torch.cat([selfcheck._gather_rows(r)[1] for r in range(world)])
    for r, res in enumerate(ranks):
        assert torch.equal(res["floats"], want_f)
        assert torch.equal(res["ids"], want_i) and res["ids"].dtype == torch.int64
        assert res["offset"] == sum(selfcheck._gather_rows(q)[0].shape[0] for q in range(r))
        # sum over ranks q of (q + 1) = 3 for every element of every row
        assert torch.equal(res["grad"], torch.full_like(selfcheck._gather_rows(r)[0], 3.0))


def test_packed_gather_rejects_misaligned_or_oversized_rows():
    import torch

    from fenrec_dist.comm import ProcessGroupComm

    comm = ProcessGroupComm(max_rows=2)
    with pytest.raises(ValueError, match=r"row counts differ: \[2, 1\]"):
        comm.gather(torch.zeros(2, 3), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="3 rows exceed max_rows=2"):
        comm.gather(torch.zeros(3, 3))

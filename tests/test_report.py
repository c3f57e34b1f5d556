"""The per-epoch progress line's time estimates."""

from fenrec_dist.train.report import eta_text, progress_line


def _rec(epoch, best_epoch, seconds=120.0):
    return {"epoch": epoch, "best_epoch": best_epoch, "best": 0.08, "time": {"epoch": seconds},
            "loss": {"total": 1.0}, "valid": {"NDCG@20": 0.08}}


def test_eta_to_the_early_stop_and_the_cap():
    # best at 110, patience 40: early stopping ends the run after epoch 150, 39 epochs after 111;
    # the cap is epoch 399 of 400, 288 epochs away
    got = eta_text(_rec(111, 110), 400, "NDCG@20", patience=40)
    assert got == "ETA 1h18m00s to the early stop after epoch 150 unless NDCG@20 improves (ETA<=9h36m00s)"
    assert eta_text(_rec(111, 110), 400, "NDCG@20") == "ETA<=9h36m00s"


def test_eta_without_an_earlier_stop_shows_the_cap_only():
    assert eta_text(_rec(381, 380), 400, "NDCG@20", patience=40) == "ETA<=36m00s"  # 380 + 40 is past the last epoch
    assert eta_text(_rec(0, -1), 400, "NDCG@20", patience=40) == "ETA<=13h18m00s"  # no best yet


def test_progress_line_carries_the_estimate():
    line = progress_line(_rec(111, 110), 400, "NDCG@20", patience=40)
    assert line.startswith("epoch 111 |") and line.endswith("(ETA<=9h36m00s)")

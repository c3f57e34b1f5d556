"""The Tune function trainable: one trial = one TorchTrainer (the Ray Train V2 pattern).

The trial builds its full config (the sweep's base config with the sampled parameters),
writes it to ``SWEEP/trials/<trial_id>/config.yaml`` and fits the same TorchTrainer as
``fenrec train`` (``driver.build_trainer``). A Ray Train callback forwards every epoch's
report to Tune, so ASHA sees ``valid/NDCG@20`` (Tune flattens the worker's nested
``{"valid": {...}}``) against ``epochs_done``. The Train run's name is the Tune trial
id: a trial restarted by ``Tuner.restore`` resumes from its last Train checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fenrec_dist.train.report import PREVIOUS

TIME_ATTR = "epochs_done"  # completed epochs: ASHA's clock, stable across resumes


def trial_dirname(trial: Any) -> str:
    """Tune's per-trial directory name: the trial id (so results map to SWEEP/trials/<id>)."""
    return str(trial.trial_id)


def make_report_callback() -> Any:
    """A TuneReportCallback that adds ``epochs_done`` to per-epoch records (not to the final one)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReportCallback(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics and "epoch" in metrics[0]:
                rec = {k: v for k, v in metrics[0].items() if k != PREVIOUS}  # the driver's business
                metrics = [{**rec, TIME_ATTR: int(rec["epoch"]) + 1}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return EpochReportCallback()


def run_trial(config: dict[str, Any], *, base: dict[str, Any], sweep_dir: str) -> None:
    """Tune entry point. ``config``: {"params": {dotted key: sampled value}}."""
    import ray.tune

    from fenrec_dist.distributed.driver import build_trainer, finish_run, prepare_run
    from fenrec_dist.tune.space import trial_config

    cfg = trial_config(base, dict(config["params"]))
    trial_id = ray.tune.get_context().get_trial_id()
    run = prepare_run(cfg, Path(sweep_dir) / "trials" / trial_id)
    trainer, run = build_trainer(cfg, run, extra_callbacks=[make_report_callback()])
    result = trainer.fit()
    finish_run(result, run, cfg)

"""The command-line faces turn bad input into one clear line and exit 2, writing nothing."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT
from fenrec_dist.cli import main


def test_prepare_bad_input_exits_2_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n2 5 x 7\n")
    rc = main(["prepare", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{bad}:2" in err and "'x'" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.txt"]


def test_train_unknown_key_exits_2_before_writing(tmp_path, capsys):
    rc = main(["train", "--local", "--set", "train.epocs=3", "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "train.epocs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ray_job_config_error_exits_2():
    out = subprocess.run([sys.executable, "ray_job.py", "--config", "configs/demo.yaml", "--set", "model.encoder=lstm",
                          "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "ray_job: config error: model.encoder" in out.stderr

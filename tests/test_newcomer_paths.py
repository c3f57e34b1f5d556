"""What a new user runs first works as written.

The READMEs' fenced commands: `fenrec config` and `ray_job.py --dry-run` run (in a directory
laid out like the repository, with the demo's data where `make demo` puts it), every other
`fenrec` command line parses, every `make` target exists, and every repository path they name
exists. The demo prepares its data where configs/demo.yaml points. The documents link only to
files that exist and cite nothing outside the repository. Every benchmark result carries its
provenance and is listed in the generated bench/README.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "cluster" / "README.md"]
DOCS = READMES + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "bench" / "README.md"]
# Subcommands documented ahead of their arrival; checked as soon as the parser has them.
PENDING_COMMANDS = {"export", "recommend", "report"}
# Documents another change adds; linked already, checked as soon as they exist.
PENDING_DOCS = {"docs/architecture.md"}
REPO_PATH = re.compile(r"^(?:configs|cluster|tune_spaces|bench|docs|fenrec_dist|tests)/[\w./\-]*[\w]$|^ray_job\.py$")
METRICS = ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"]


def fenced_lines(path: Path) -> list[str]:
    """Shell lines of a markdown file's ```bash / ```sh / plain ``` blocks (other languages, such
    as ```text pictures, skipped), backslash continuations joined."""
    blocks: list[list[str]] = []
    block: list[str] | None = None
    for line in path.read_text().splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and block is None:
            block = [] if fence.group(1) in ("", "bash", "sh") else ["<skip>"]
        elif fence:
            if block[:1] != ["<skip>"]:
                blocks.append(block)
            block = None
        elif block is not None:
            block.append(line)
    lines: list[str] = []
    for b in blocks:
        lines += [ln.strip() for ln in "\n".join(b).replace("\\\n", " ").splitlines() if ln.strip()]
    return lines


def commands() -> list[tuple[str, str]]:
    out = []
    for path in READMES:
        for line in fenced_lines(path):
            argv = shlex.split(line, comments=True)
            if argv:
                out.append((path.relative_to(ROOT).as_posix(), line))
    return out


def load_ray_job():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ray_job_entry", ROOT / "ray_job.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory as `make demo` leaves it: the repository's configs, spaces, cluster
    files and entry point, and the demo's data prepared by `fenrec demo` itself (its training,
    Ray Train workers, replaced by a stub: that part has its own tests). configs/beauty.yaml's
    data path points at the same tiny data, so the Beauty commands plan too."""
    import fenrec_dist.distributed.driver as driver
    from fenrec_dist.demo import run_demo

    work = tmp_path_factory.mktemp("newcomer")
    for name in ("configs", "tune_spaces", "cluster", "ray_job.py"):
        (work / name).symlink_to(ROOT / name)
    calls = []

    def fake_run_distributed(cfg, run_dir, log=print, **kw):  # type: ignore[no-untyped-def]
        calls.append(cfg.data.path)
        return {"best_epoch": 0, "test": {k: 0.0 for k in METRICS}}

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(driver, "run_distributed", fake_run_distributed)
        run_demo("runs/demo", log=lambda *a, **k: None)
    assert calls == ["data/demo"]
    (work / "data" / "beauty").symlink_to(work / "data" / "demo")
    return work


def test_demo_prepares_where_its_config_points(after_demo: Path) -> None:
    manifest = json.loads((after_demo / "data" / "demo" / "manifest.json").read_text())
    assert manifest["train_samples"] > 0
    assert not (after_demo / "runs" / "demo" / "data").exists()


def test_ray_job_dry_run_after_demo(after_demo: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The cluster README's first check, right after `make demo`."""
    monkeypatch.chdir(after_demo)
    assert load_ray_job().main(["--config", "configs/demo.yaml", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out.partition("# plan\n")[2])
    assert plan["data"]["path"] == "data/demo" and plan["data"]["shards"]


@pytest.mark.parametrize("source,line", commands(), ids=lambda v: v if "/" not in v and len(v) < 60 else None)
def test_readme_command(source: str, line: str, after_demo: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = shlex.split(line, comments=True)
    # every repository path a command names exists (outputs such as --out DIR excepted)
    outs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--png", "--md")}
    named = [a for a in argv if REPO_PATH.match(a) and a not in outs]
    missing = [a for a in named if not (ROOT / a).exists()]
    assert not missing, f"{source}: `{line}` names missing paths {missing}"
    monkeypatch.chdir(after_demo)
    if argv[:3] == ["ray", "job", "submit"] and "--" in argv:
        argv = argv[argv.index("--") + 1:]  # the job's entry point, checked as a command here
        if argv[:3] == ["python", "-m", "fenrec_dist.cli"]:
            argv = ["fenrec", *argv[3:]]
        argv = [a for a in argv if a != "--dry-run"] if argv[0] == "fenrec" else argv[:0]
    if not argv:
        return
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(argv[1:]) <= set(targets), f"{source}: `{line}`: no such make target"
    elif argv[0] == "fenrec":
        from fenrec_dist.cli import build_parser, main

        parser = build_parser()
        known = next(a for a in parser._actions if a.dest == "cmd").choices
        if argv[1] in PENDING_COMMANDS and argv[1] not in known:
            pytest.skip(f"`fenrec {argv[1]}` is not in this checkout yet")
        with contextlib.redirect_stderr(sys.stdout):
            try:
                parser.parse_args(argv[1:])
            except SystemExit as exc:
                pytest.fail(f"{source}: `{line}` does not parse (exit {exc.code}): {capsys.readouterr().out[-500:]}")
        if argv[1] == "config" and not line.startswith("ray "):
            assert main(argv[1:]) == 0, f"{source}: `{line}`"
    elif argv[:2] == ["python", "ray_job.py"] and "--dry-run" in argv:
        assert load_ray_job().main(argv[2:]) == 0, f"{source}: `{line}`: {capsys.readouterr().err[-500:]}"


def test_help_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from fenrec_dist.cli import build_parser

    parser = build_parser()
    for name in next(a for a in parser._actions if a.dest == "cmd").choices:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0, name
    assert "usage: fenrec" in capsys.readouterr().out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_exist_and_nothing_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path = (doc.parent / target).resolve()
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else target
        assert path.exists() or rel in PENDING_DOCS, f"{doc.name} links to missing {target}"
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
    assert not re.search(r"(?<![\w.])\.\./", text), f"{doc.name} names a path outside the repository"
    assert "FENREC.md" not in text


@pytest.mark.parametrize("doc", [d for d in DOCS if d.parent.name != "bench"], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_are_for_users(doc: Path) -> None:
    """Facts and commands, not a lab notebook: no work history, issue numbers or dates."""
    found = re.findall(r"\bsessions?\b|\bissue #?\d+|\b20\d\d-\d\d-\d\d\b", doc.read_text(), flags=re.I)
    assert not found, f"{doc.name}: {found}"


def test_readme_shape() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert text.count("<!-- results:begin -->") == 1 and text.count("<!-- results:end -->") == 1
    assert text.index("<!-- results:begin -->") < text.index("<!-- results:end -->")
    head = text[:text.index("## Quick start")]
    assert "make demo" in head and "make test" in head


def test_every_bench_result_has_provenance_and_is_indexed() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_index", ROOT / "bench" / "index.py")
        index = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(index)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert index.result_files(), "no benchmark results found"
    assert index.missing_provenance() == [], "results without provenance"
    assert (ROOT / "bench" / "README.md").read_text() == index.render(), \
        "bench/README.md is stale: run .venv/bin/python bench/index.py"

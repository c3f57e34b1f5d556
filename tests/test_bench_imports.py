"""Every ``fenrec_dist`` module a bench/ script names exists, and so does each name it imports
from one: a refactor that moves or removes a module (train/single.py, intents.py) fails here,
not when someone next runs the benchmark.

Read with ``ast`` only, nothing imported (the package's modules pull in torch, FAISS, Ray):
modules are found on disk with the import machinery's ``PathFinder`` one dotted part at a
time, and a name imported from a module must be bound at its top level or be a submodule.
Collected: ``import fenrec_dist.X``, ``from fenrec_dist.X import Y`` (at any depth, inside
functions too), the step fixtures' ``mod("X")`` (``importlib.import_module(f"{pkg}.X")``,
with ``mod("X").attr``), ``importlib.import_module("fenrec_dist.X")`` and string constants
that are a dotted ``fenrec_dist.X`` name (``[python, "-m", "fenrec_dist.cli"]``).

Not checked: code inside an ``except ModuleNotFoundError`` / ``except ImportError`` handler,
which is where a script falls back to an older revision's module for an A/B baseline (the
``try`` body, the current tree's side, is checked).
"""

from __future__ import annotations

import ast
import importlib.machinery
import re
from functools import lru_cache
from pathlib import Path

from conftest import ROOT

PKG = "fenrec_dist"
BENCH = ROOT / "bench"
DOTTED = re.compile(rf"{PKG}(\.[A-Za-z_][A-Za-z0-9_]*)+")
FALLBACK_ERRORS = {"ImportError", "ModuleNotFoundError"}


@lru_cache(maxsize=None)
def module_file(name: str) -> Path | None:
    """The source file of module ``name`` (``__init__.py`` for a package) in this checkout,
    or None when no such module exists; found without importing anything."""
    parts = name.split(".")
    if parts[0] != PKG:
        return None
    path, origin = [str(ROOT)], None
    for part in parts:
        if path is None:  # a plain module has no submodules
            return None
        spec = importlib.machinery.PathFinder.find_spec(part, path)
        if spec is None or spec.origin is None:
            return None
        origin = spec.origin
        path = list(spec.submodule_search_locations) if spec.submodule_search_locations is not None else None
    return Path(origin) if origin else None


@lru_cache(maxsize=None)
def top_level_names(name: str) -> frozenset[str] | None:
    """Names bound at the top level of module ``name`` (definitions, assignments, imports, also
    inside top-level if/try blocks), or None when it defines a module ``__getattr__``."""
    tree = ast.parse(module_file(name).read_text())  # type: ignore[union-attr]
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for h in node.handlers:
                    visit(h.body)
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                visit(node.body)
    visit(tree.body)
    return None if "__getattr__" in names else frozenset(names)


def has_name(module: str, name: str) -> bool:
    """``from module import name`` works: a submodule, or a name bound at its top level."""
    if module_file(f"{module}.{name}") is not None:
        return True
    names = top_level_names(module)
    return names is None or name in names


def resolve_dotted(dotted: str) -> str | None:
    """None when ``dotted`` names a module, or a module's attribute (``fenrec_dist.cli.main``);
    else why not."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        mod = ".".join(parts[:i])
        if module_file(mod) is not None:
            if i == len(parts) or has_name(mod, parts[i]):
                return None
            return f"{mod} has no {parts[i]!r}"
    return f"no module {dotted}"


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    t = handler.type
    kinds = t.elts if isinstance(t, ast.Tuple) else [t] if t is not None else []
    return any(isinstance(k, ast.Name) and k.id in FALLBACK_ERRORS for k in kinds)


def _mod_call(node: ast.AST) -> str | None:
    """``mod("X")`` -> ``fenrec_dist.X``; ``importlib.import_module("fenrec_dist.X")`` -> that."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    f, arg = node.func, node.args[0].value
    if isinstance(f, ast.Name) and f.id == "mod":
        return f"{PKG}.{arg}"
    if (isinstance(f, ast.Attribute) and f.attr == "import_module" and (arg == PKG or arg.startswith(PKG + "."))):
        return arg
    return None


def references(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None) of each fenrec_dist reference in ``path``, outside
    ModuleNotFoundError/ImportError handlers."""
    out: list[tuple[int, str, str | None]] = []
    fallback: set[int] = set()  # ids of nodes inside a fallback handler
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and _catches_import_error(node):
            fallback.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    seen: set[int] = set()  # mod("X") calls already counted as mod("X").attr
    for node in ast.walk(tree):
        if id(node) in fallback or id(node) in seen:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == PKG]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == PKG:
            out += [(node.lineno, node.module, a.name) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Attribute) and (mod := _mod_call(node.value)) is not None:
            out.append((node.lineno, mod, node.attr))
            seen.update((id(node.value), id(node.value.args[0])))  # type: ignore[attr-defined]
        elif (mod := _mod_call(node)) is not None:
            out.append((node.lineno, mod, None))
            seen.add(id(node.args[0]))  # type: ignore[attr-defined]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and DOTTED.fullmatch(node.value):
            out.append((node.lineno, node.value, ""))  # "" : a dotted name, maybe module.attribute
    return out


def bench_scripts() -> list[Path]:
    return sorted(p for p in BENCH.rglob("*.py") if "results" not in p.relative_to(BENCH).parts)


def stale_references(paths: list[Path]) -> list[str]:
    bad = []
    for path in paths:
        for line, module, name in references(path):
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            if name == "":
                why = resolve_dotted(module)
                if why:
                    bad.append(f"{where}: {module!r}: {why}")
            elif module_file(module) is None:
                bad.append(f"{where}: no module {module}")
            elif name is not None and not has_name(module, name):
                bad.append(f"{where}: {module} has no {name!r}")
    return bad


def test_every_fenrec_dist_module_a_bench_script_names_exists():
    scripts = bench_scripts()
    assert len(scripts) > 30 and BENCH / "_arms.py" in scripts
    assert stale_references(scripts) == []


def test_a_removed_module_or_name_is_caught(tmp_path):
    """The check itself: each kind of reference to something missing is reported, a fallback
    for older revisions is not, and live references pass."""
    (tmp_path / "stale.py").write_text('''"""Docstring naming fenrec_dist.train.single is prose."""
import importlib
import fenrec_dist.train.single as single
from fenrec_dist.train.trainer import build_model, train_single
from fenrec_dist.train import layout, no_such_module


def f(pkg):
    from fenrec_dist.intents import IntentClusters
    mod = lambda name: importlib.import_module(f"{pkg}.{name}")
    mod("train.single").build_model
    mod("train.trainer").no_such_function
    mod("train.trainer").fit
    importlib.import_module("fenrec_dist.gone")
    try:
        intents = mod("negatives.intents")
    except ModuleNotFoundError:
        intents = mod("intents")  # an older revision: not checked
        from fenrec_dist.train.single import build_model  # noqa: F811
    return ["-m", "fenrec_dist.cli", "fenrec_dist.nope", "fenrec_dist.cli.main"]
''')
    bad = "\n".join(stale_references([tmp_path / "stale.py"]))
    for expected in [":3: no module fenrec_dist.train.single",
                     ":4: fenrec_dist.train.trainer has no 'train_single'",
                     ":5: fenrec_dist.train has no 'no_such_module'",
                     ":9: no module fenrec_dist.intents",
                     ":11: no module fenrec_dist.train.single",
                     ":12: fenrec_dist.train.trainer has no 'no_such_function'",
                     ":14: no module fenrec_dist.gone",
                     ":20: 'fenrec_dist.nope': fenrec_dist has no 'nope'"]:
        assert expected in bad, bad
    assert len(bad.splitlines()) == 8, bad

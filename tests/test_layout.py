"""The package layout: which top-level package may import which (every import, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Allowed imports between top-level packages: lower layers never import upper ones.
#: ``core`` (I/O, hashing, names, the registry mechanism, run/cohort file formats) knows nobody;
#: ``cohorts`` knows no model and no metric; ``metrics`` and ``leaderboards`` read plain arrays and
#: records; ``generators`` and ``captioners`` may use cohorts (captions, grids) and metrics' measurements
#: and feature networks; ``bench``
#: (runner, CLI, compare) wires everything.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "cohorts": {"core"},
    "metrics": {"core"},
    "leaderboards": {"core"},
    "generators": {"core", "cohorts", "metrics"},
    "captioners": {"core", "cohorts", "metrics"},
    "bench": {"core", "cohorts", "metrics", "generators", "captioners", "leaderboards"},
}


def imports_of(path: Path) -> set[str]:
    """Top-level package names imported anywhere in a file (absolute imports only)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_import_directions():
    violations = []
    for pkg, allowed in ALLOWED.items():
        files = sorted((ROOT / pkg).rglob("*.py"))
        assert files, f"package {pkg} not found"
        for f in files:
            bad = (imports_of(f) & set(ALLOWED)) - allowed - {pkg}
            violations += [f"{f.relative_to(ROOT)} imports {b}" for b in sorted(bad)]
    assert not violations, "\n".join(violations)


def test_the_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy\n\ndef g():\n    from bench.runner import run\n    import leaderboards.html\n")
    assert imports_of(f) == {"numpy", "bench", "leaderboards"}


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_every_package_is_installed_by_pyproject(pkg):
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"{pkg}*"' in text, f"pyproject.toml's package list misses {pkg}"


#: The runner's modules: a pipeline of small stages, no long functions.
RUNNER_MODULES = ("bench/runner.py", "bench/stages.py", "bench/workers.py", "bench/prompts.py", "bench/tasks.py",
                  "bench/followup.py", "bench/report.py")


def test_no_module_over_500_lines():
    long = [f"{f.relative_to(ROOT)}: {n} lines" for pkg in ALLOWED for f in sorted((ROOT / pkg).rglob("*.py"))
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 500]
    assert not long, "\n".join(long)


def test_no_runner_function_over_60_lines():
    long = []
    for name in RUNNER_MODULES:
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{name}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_no_module_global_mutable_state_in_the_runner():
    """Module-level dicts/lists/sets that code mutates are the state that kept models alive across runs:
    the runner's modules hold none (constants are tuples, frozen mappings or factories)."""
    found = []
    for name in RUNNER_MODULES:
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        for node in tree.body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                continue
            if isinstance(value, (ast.Dict, ast.List, ast.Set)):
                found.append(f"{name}:{node.lineno}")
    assert not found, found

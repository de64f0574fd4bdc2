"""Shared test set-up: every test session gets its own $BRAINGENBENCH_HOME (no pollution of the
user's cache, no stale cache entries between sessions), removed when the session ends."""

import atexit
import os
import shutil
import tempfile

if "BRAINGENBENCH_HOME" not in os.environ:
    _HOME = tempfile.mkdtemp(prefix="bgb-test-home-")
    os.environ["BRAINGENBENCH_HOME"] = _HOME
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _interval_violations(root) -> tuple[int, list[str]]:
    """Every record.json below ``root``: metric values outside their CI, floors outside floor_ci."""
    import json
    import math
    from pathlib import Path

    def num(x):
        return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None

    bad, n = [], 0
    for path in Path(root).rglob("record.json"):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        n += 1
        for key, m in (rec.get("metrics") or {}).items():
            pairs = [("value", m.get("value"), m.get("ci_low"), m.get("ci_high"))]
            fci = m.get("floor_ci") or [None, None]
            pairs.append(("floor", m.get("floor"), fci[0], fci[1]))
            for what, v, lo, hi in pairs:
                v, lo, hi = num(v), num(lo), num(hi)
                if None in (v, lo, hi):
                    continue
                eps = 1e-9 * max(1.0, abs(v))
                if not lo - eps <= v <= hi + eps:
                    bad.append(f"{path}: {key} {what} {v!r} outside its interval [{lo!r}, {hi!r}]")
    return n, bad


def _schema_violations(root) -> list[str]:
    """Every record.json below ``root`` that does not conform to core/record.schema.json (records that
    tests break on purpose live in folders named ``broken*``, ``future*``, ``bad*`` or ``running*``)."""
    import json
    from pathlib import Path

    from core.record import record_problem

    bad = []
    for path in Path(root).rglob("record.json"):
        if any(part.startswith(("broken", "future", "bad", "running")) for part in path.parts[-3:]):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        problem = record_problem(rec)
        if problem is not None:
            bad.append(f"{path}: schema: {problem}")
    return bad


def pytest_sessionfinish(session, exitstatus):
    """The suite-wide guarantee: no bootstrap interval in any record the tests wrote excludes its
    point estimate (the floor likewise for its floor_ci)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        root = factory.getbasetemp()
    except Exception:  # noqa: BLE001 - no temporary folder was made: nothing to check
        return
    n, bad = _interval_violations(root)
    bad += _schema_violations(root)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.ensure_newline()
    if bad:
        if reporter:
            reporter.write_line(f"record check: {len(bad)} estimate(s) outside their interval or schema "
                                f"violation(s) in {n} records:", red=True)
            for line in bad[:20]:
                reporter.write_line("  " + line, red=True)
        session.exitstatus = 1
    elif reporter and n:
        reporter.write_line(f"record check: every estimate of {n} records lies inside its interval; every "
                            "record conforms to the schema")

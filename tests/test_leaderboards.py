"""Tests for the leaderboards package (records in, HTML/markdown/CSV out)."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import leaderboards
from leaderboards import NoRecordsError, build_site, build_tables, load_records, to_markdown
from leaderboards.markdown import escape_md

EVIL = "<script>alert(1)</script>"
EVIL_ARGS = {"note": '"&<>|`', "k": 2}
PHANTOM_HASH = "ab12cd34ef56ab12cd34ef56"


def _metric(value, ci, floor, hib, n=16, **extra):
    lo, hi = (None, None) if value is None or ci is None else (value - ci, value + ci)
    entry = {
        "value": value, "ci_low": lo, "ci_high": hi, "n": n, "higher_is_better": hib,
        "floor": floor, "warnings": [], "details": {}, "description": "", "family": "",
        "config": {},
    }
    entry.update(extra)
    return entry


def _record(run_id, generator, args, metrics, *, suite="quick", seed=0, reference="phantom",
            content_hash=PHANTOM_HASH, status="complete", n_prompts=16, role=None, headline=None):
    info = {"checkpoint_sha256": None, "description": f"{generator} baseline"}
    if role is not None:
        info["role"] = role
    suite_d = {"name": suite, "version": 1,
               "grid": {"name": "3mm", "voxel_size": 3.0, "shape": [48, 64, 56]},
               "n_prompts": n_prompts}
    if headline is not None:
        suite_d["headline"] = headline
    return {
        "schema_version": 1,
        "run_id": run_id,
        "created": "2026-11-22T08:00:00Z",
        "status": status,
        "generator": {"name": generator, "args": args, "info": info},
        "suite": suite_d,
        "reference": {"name": reference, "content_hash": content_hash, "synthetic": True,
                      "n_subjects": 400, "label": "SYNTHETIC phantom — not real MRI"},
        "seed": seed, "limit": None, "device": "cpu",
        "environment": {"python": "3.11.7", "packages": {"torch": "2.13.0", "numpy": "2.1.0"},
                        "git_revision": "abc123", "platform": "Linux-x86_64"},
        "timings": {"cohort": 1.2, "generate": 3.4, "features": 5.6, "metrics": 7.8, "total": 18.0},
        "extractors": {"deepbet": {"name": "deepbet", "weights_sha256": "f" * 64,
                                   "preprocessing": "skull-strip, 3mm"}},
        "metrics": metrics,
        "prompts": [{"subject_id": f"phantom-{i:04d}",
                     "text": f"Synthetic phantom. T1-weighted, age {40 + i} <b>bold</b>"}
                    for i in range(12)],
        "samples_dir": "samples",
    }


def _quick_metrics(fid, ssim, w1, *, fid_floor=0.009, descr=True):
    return {
        "fid": _metric(fid, 0.002, fid_floor, False,
                       description="Fréchet distance between deepbet features" if descr else "",
                       family="fid", config={"extractor": "deepbet"}),
        "ssim": _metric(ssim, 0.03, 0.80, True, description="Mean 3D SSIM to nearest reference",
                        family="ssim"),
        "histogram/w1": _metric(w1, 0.001, 0.002, False,
                                description="Wasserstein-1 distance of intensity histograms",
                                family="histogram"),
    }


#: The headline a suite declares (``suite.headline`` of the record).
HEADLINE = {"realism": ["radiomics", "fid-deepbet"],
            "diversity": ["prdc-deepbet/recall", "ms_ssim_diversity"],
            "conformance": ["conformance/modality_accuracy"],
            "privacy": ["memorization-deepbet"]}


def _m(value, half, floor, direction, axis, family, *, floor_half=None, **extra):
    """A metric entry as the runner now writes it (direction, axis, floor_ci)."""
    hib = direction == "higher"
    entry = _metric(value, half, floor, hib, family=family, direction=direction, axis=axis, **extra)
    if floor is not None and floor_half is not None:
        entry["floor_ci"] = [floor - floor_half, floor + floor_half]
    return entry


def suite_metrics(bad: float, *, memo: float = 0.05, diversity: float = 0.30, floor_shift: float = 0.0,
                  copies: float = 0.0) -> dict:
    """Every metric family of the quick suite, keyed as the runner keys them. ``bad`` 0 is real-like,
    1 is far from real; ``memo`` the memorisation share; ``floor_shift`` moves every floor (seeds)."""
    f = 1.0 + floor_shift
    return {
        "fid-deepbet": _m(0.2 + 30 * bad, 0.05 + bad, 0.18 * f, "lower", "realism", "fid", floor_half=0.05,
                          description="Fréchet distance between deepbet features"),
        "kid-deepbet": _m(0.001 + 0.2 * bad, 0.001, 0.0008 * f, "lower", "realism", "kid", floor_half=0.0005),
        "prdc-deepbet/precision": _m(max(0.0, 0.8 - 0.7 * bad), 0.05, 0.8 * f, "higher", "realism", "prdc",
                                     floor_half=0.05),
        "prdc-deepbet/recall": _m(max(0.0, 0.75 - 0.7 * bad), 0.06, 0.76 * f, "higher", "diversity", "prdc",
                                  floor_half=0.05),
        "prdc-deepbet/density": _m(1.1 - bad, 0.1, 1.0 * f, "higher", "realism", "prdc", floor_half=0.1),
        "prdc-deepbet/coverage": _m(max(0.0, 0.9 - 0.8 * bad), 0.04, 0.92 * f, "higher", "diversity", "prdc",
                                    floor_half=0.03),
        "memorization-deepbet": _m(memo, 0.05 if memo < 1 else 0.0, 0.05 * f, "lower", "privacy", "memorization",
                                   floor_half=0.03, details={"nominal_rate": 0.05, "copy_fraction": copies}),
        "ssim": _m(max(0.0, 0.85 - 0.6 * bad), 0.02, 0.86 * f, "higher", "realism", "ssim", floor_half=0.02),
        "ms_ssim_diversity": _m(diversity, 0.02, 0.30 * f, "target", "diversity", "ms_ssim_diversity",
                                floor_half=0.02),
        "histogram/w1": _m(0.002 + 0.05 * bad, 0.001, 0.002 * f, "lower", "realism", "histogram", floor_half=0.001),
        "radiomics": _m(0.5 + 8 * bad, 0.2, 0.45 * f, "lower", "realism", "radiomics", floor_half=0.1),
        "conformance/modality_accuracy": _m(max(0.0, 0.98 - 0.5 * bad), 0.02, 0.99 * f, "higher", "conformance",
                                            "conformance", floor_half=0.01),
        "conformance/age_r": _m(0.8 - 0.7 * bad, 0.05, 0.85 * f, "higher", "conformance", "conformance",
                                floor_half=0.03),
        "conformance/age_mae": _m(4 + 10 * bad, 0.8, 4.2 * f, "lower", "conformance", "conformance", floor_half=0.5),
        "through_plane": _m(0.01 + 0.3 * bad, 0.005, 0.011 * f, "lower", "realism", "through_plane",
                            floor_half=0.003),
    }


def write_runs(runs: Path, records: list[dict]) -> Path:
    """Write each record to ``runs/<run_id>/record.json``."""
    for rec in records:
        d = runs / rec["run_id"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    return runs


def honest_runs(n_prompts: int = 16, seed: int = 0) -> list[dict]:
    """A ranking with traps: a memorising baseline (copies) and a folder run that copies too, both
    better than every honest run on realism; a run better than real data on radiomics."""
    kw = {"n_prompts": n_prompts, "headline": HEADLINE, "seed": seed}
    return [
        _record(f"n{n_prompts}-retrieval", "retrieval", {"k": 1}, suite_metrics(0.0, memo=1.0, copies=1.0),
                role="memorising baseline", **kw),
        _record(f"n{n_prompts}-folder", "folder", {"path": "/data/samples"}, suite_metrics(0.01, memo=1.0),
                role="external", **kw),
        _record(f"n{n_prompts}-ldm3d", "ldm3d", {"steps": 50}, suite_metrics(0.1, diversity=0.32),
                role="reference-model", **kw),
        _record(f"n{n_prompts}-pca", "pca", {"k": 8}, suite_metrics(0.4, diversity=0.05), role="baseline", **kw),
        _record(f"n{n_prompts}-template", "template", {}, suite_metrics(0.9, diversity=0.9), role="baseline", **kw),
    ]


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    """Four records: three on suite 'quick' (incl. a malicious name), one on suite 'full'."""
    runs = tmp_path / "runs"
    recs = [
        _record("quick-retrieval-1a2b3c4d", "retrieval", {"k": 1},
                _quick_metrics(0.012, 0.71, 0.004)),
        _record("quick-noise-5e6f7a8b", "noise", {},
                _quick_metrics(0.300, 0.20, float("nan"))),
        _record("quick-evil-9c0d1e2f", EVIL, EVIL_ARGS,
                _quick_metrics(0.050, 0.75, 0.010)),
        _record("full-retrieval-aaaa0000", "retrieval", {"k": 1},
                {"fid": _metric(None, None, 0.01, False,
                                details={"error": "extractor failed: out of memory"}),
                 "ssim": _metric(0.66, 0.02, 0.82, True)},
                suite="full"),
    ]
    for rec in recs:
        d = runs / rec["run_id"]
        d.mkdir(parents=True)
        # json.dumps writes NaN as the NaN literal, exactly as the runner would
        (d / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    return runs


@pytest.fixture()
def site(runs_dir: Path, tmp_path: Path) -> dict:
    return build_site(runs_dir, tmp_path / "site")


def _section_html(index: str, suite: str, n: int = 16) -> str:
    """The whole section of one leaderboard (headline table, charts, collapsed full table)."""
    start = index.index(f"Suite <code>{suite}</code> v1 · <span class=\"n-title\">N = {n}</span>")
    end = index.find("<section", start)
    return index[start: end if end >= 0 else len(index)]


def _table_html(index: str, suite: str, n: int = 16, which: str = "headline") -> str:
    """The headline table (``which="headline"``) or the full table (``"full"``) of one leaderboard."""
    sec = _section_html(index, suite, n)
    start = sec.index(f'<table class="lb {which}">')
    return sec[start: sec.index("</table>", start)]


def test_build_site_writes_all_outputs(site):
    assert set(site) >= {"index", "markdown", "csv"}
    for key in ("index", "markdown", "csv"):
        assert site[key].is_file()
    run_pages = sorted(p.name for p in site["runs"].glob("*.html"))
    assert run_pages == sorted(f"{r}.html" for r in (
        "quick-retrieval-1a2b3c4d", "quick-noise-5e6f7a8b", "quick-evil-9c0d1e2f",
        "full-retrieval-aaaa0000"))


def test_index_rows_links_and_synthetic_note(site):
    index = site["index"].read_text(encoding="utf-8")
    for which in ("headline", "full"):
        quick = _table_html(index, "quick", which=which)
        assert quick.count('<tr class="run"') == 3
        assert quick.count('<tr class="floor">') == 1
        full = _table_html(index, "full", which=which)
        assert full.count('<tr class="run"') == 1
        assert full.count('<tr class="floor">') == 1
    assert "SYNTHETIC" in index
    assert 'fid <span class="dir">↓</span>' in index and 'ssim <span class="dir">↑</span>' in index
    # the full table is one click away
    assert index.count('<details class="full">') == 2
    # relative links only, self-contained (no external scripts / styles)
    assert 'href="runs/quick-retrieval-1a2b3c4d.html"' in index
    assert "http://" not in index
    assert "https://" not in index
    # plotly.js once, beside the pages, referenced relatively; one figure per metric
    assert '<script src="assets/plotly.min.js"' in index
    assert site["index"].with_name("assets").joinpath("plotly.min.js").stat().st_size > 1_000_000
    assert index.count('class="plot-data"') == 3 + 1  # suite full: fid failed, only ssim
    assert len(index) < 200_000  # plotly.js is not inlined


def test_html_escapes_user_strings(site):
    outputs = [site["index"]] + list(site["runs"].glob("*.html"))
    for path in outputs:
        text = path.read_text(encoding="utf-8")
        assert EVIL not in text, path
        assert "<b>bold</b>" not in text, path
        assert '"&<>' not in text, path
    index = site["index"].read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    evil_page = (site["runs"] / "quick-evil-9c0d1e2f.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in evil_page
    assert "&#34;&amp;&lt;&gt;" in evil_page or "&quot;&amp;&lt;&gt;" in evil_page
    assert "&lt;b&gt;bold&lt;/b&gt;" in evil_page  # prompts escaped too
    # the only executable inline scripts are our own (sort + chart renderer); figure data
    # travel as JSON with <, > and & escaped so no string can close its element
    assert index.count("<script>") == 2
    for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', index, re.S):
        assert "<" not in block and ">" not in block
        json.loads(block)
    # plotly labels carry the name as entities (shown literally by plotly), JSON-escaped
    assert "\\u0026lt;script\\u0026gt;alert(1)" in index


def test_best_marking_respects_direction(runs_dir):
    tables = build_tables(load_records(runs_dir))
    quick = next(t for t in tables if t.suite == "quick")
    by_gen = {r.generator: r for r in quick.run_rows}
    # fid is lower-is-better: the minimum (retrieval, 0.012) is best
    assert by_gen["retrieval"].cells["fid"].is_best
    assert not by_gen["noise"].cells["fid"].is_best
    assert not by_gen[EVIL].cells["fid"].is_best
    # ssim is higher-is-better: the maximum (evil, 0.75) is best
    assert by_gen[EVIL].cells["ssim"].is_best
    assert not by_gen["retrieval"].cells["ssim"].is_best
    # the floor row never counts as best (its ssim 0.80 is higher than every run)
    assert not any(c.is_best for c in quick.floor_row.cells.values())
    # preferred column order and directions
    assert [c.key for c in quick.columns] == ["fid", "ssim", "histogram/w1"]
    assert [c.arrow for c in quick.columns] == ["↓", "↑", "↓"]
    assert quick.columns[0].description.startswith("Fréchet")
    # rows ranked best-first on fid, floor last
    assert [r.generator for r in quick.rows] == ["retrieval", EVIL, "noise", None]
    assert quick.rows[-1].label == "real vs real (floor)"


def test_best_cell_marked_in_html(site):
    index = site["index"].read_text(encoding="utf-8")
    quick = _table_html(index, "quick", which="full")
    best_cells = re.findall(r'<td class="num best"[^>]*><strong>([^<]*)</strong><span class="ci">([^<]*)<',
                            quick)
    # retrieval row (ranked first): fid and w1; evil row: ssim
    assert best_cells == [("0.012", "± 0.002"), ("0.004", "± 0.001"), ("0.75", "± 0.03")]
    # records without a declared headline lead with their first ranked column (fid), with ×floor
    head = _table_html(index, "quick")
    assert re.findall(r'<td class="num best[^"]*"[^>]*><strong>([^<]*)</strong>', head) == ["0.012"]
    assert "×1.33" in head  # 0.012 / 0.009


def test_missing_metric_shows_dash(runs_dir, site):
    tables = build_tables(load_records(runs_dir))
    quick = next(t for t in tables if t.suite == "quick")
    noise = next(r for r in quick.run_rows if r.generator == "noise")
    assert noise.cells["histogram/w1"].missing and noise.cells["histogram/w1"].text() == "—"
    full = next(t for t in tables if t.suite == "full")
    fid = full.run_rows[0].cells["fid"]
    assert fid.text() == "—" and "out of memory" in fid.error
    index = site["index"].read_text(encoding="utf-8")
    assert '<td class="num missing" data-v=""' in index
    md = site["markdown"].read_text(encoding="utf-8")
    assert "| retrieval (k=1) | external | 16 | — |" in md
    page = (site["runs"] / "full-retrieval-aaaa0000.html").read_text(encoding="utf-8")
    assert "error: extractor failed: out of memory" in page


def test_markdown_rows_bold_and_escaping(runs_dir):
    md = to_markdown(build_tables(load_records(runs_dir)))
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    # per leaderboard a headline table and the full table (header + separator + runs + floor):
    # full: 2 x (2 + 1 + 1); quick: 2 x (2 + 3 + 1)
    assert len(table_lines) == 8 + 12
    assert "| Generator | Role | N | realism: fid ↓ |" in md
    assert "| Generator | Role | N | fid ↓ | ssim ↑ | histogram/w1 ↓ |" in md
    assert "**0.012 ± 0.002** ★ · ×1.33" in md  # headline: bold, star and × floor
    assert "| **0.75 ± 0.03** ★ |" in md  # full table: no × floor
    assert md.count("<details><summary>All metrics</summary>") == 2
    floor_lines = [ln for ln in table_lines if "real vs real (floor)" in ln]
    assert len(floor_lines) == 4 and not any("**" in ln for ln in floor_lines)
    assert "<script>" not in md and "&lt;script&gt;" in md
    # tables are sorted by suite: "full" then "quick"; every line has as many unescaped pipes as
    # its header, even the malicious one
    widths = []
    for ln in table_lines:
        if ln.startswith("| Generator"):
            widths.append(len(re.findall(r"(?<!\\)\|", ln)))
        assert len(re.findall(r"(?<!\\)\|", ln)) == widths[-1], ln
    assert widths == [5, 6, 5, 7]  # pipes: Generator, Role, N + 1 headline / 2 / 1 / 3 metric columns, + 1
    assert "SYNTHETIC" in md


def test_escape_md():
    assert escape_md("a|b`c<d>&") == r"a\|b\`c&lt;d&gt;&amp;"
    assert escape_md("line1\nline2") == "line1 line2"


def test_csv_long_format(site):
    with site["csv"].open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 3 + 2  # runs x metrics
    assert list(rows[0])[:12] == ["run_id", "suite", "reference", "generator", "args", "metric",
                                  "value", "ci_low", "ci_high", "floor", "n", "higher_is_better"]
    assert {"table", "N", "role", "rank", "headline", "ratio_to_floor", "versus_floor", "best"} <= set(rows[0])
    # grouped per leaderboard (full, then quick), runs in ranking order, headline metric first
    assert [(r["suite"], r["rank"], r["metric"]) for r in rows[:5]] == [
        ("full", "1", "fid"), ("full", "1", "ssim"), ("quick", "1", "fid"), ("quick", "1", "ssim"),
        ("quick", "1", "histogram/w1")]
    assert rows[2]["headline"] == "true" and rows[3]["headline"] == "false"
    assert rows[2]["N"] == "16" and rows[2]["role"] == "external" and rows[2]["best"] == "true"
    assert math.isclose(float(rows[2]["ratio_to_floor"]), 0.012 / 0.009)
    assert rows[2]["table"].startswith("quick v1 · N=16")
    evil = [r for r in rows if r["generator"] == EVIL]
    assert len(evil) == 3 and json.loads(evil[0]["args"]) == EVIL_ARGS
    fid = next(r for r in rows if r["run_id"] == "quick-retrieval-1a2b3c4d" and r["metric"] == "fid")
    assert math.isclose(float(fid["value"]), 0.012) and fid["higher_is_better"] == "false"
    assert math.isclose(float(fid["ci_low"]), 0.010) and fid["n"] == "16"
    nan = next(r for r in rows if r["run_id"] == "quick-noise-5e6f7a8b"
               and r["metric"] == "histogram/w1")
    assert nan["value"] == ""


def test_unreadable_and_foreign_records_skipped(runs_dir, caplog):
    bad = runs_dir / "broken" / "record.json"
    bad.parent.mkdir()
    bad.write_text("{not json", encoding="utf-8")
    future = runs_dir / "future" / "record.json"
    future.parent.mkdir()
    future.write_text(json.dumps({"schema_version": 99, "run_id": "x"}), encoding="utf-8")
    running = runs_dir / "running" / "record.json"
    running.parent.mkdir()
    running.write_text(json.dumps(_record("r", "retrieval", {}, {}, status="running")),
                       encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="leaderboards"):
        records = load_records(runs_dir)
    assert len(records) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in m and "unreadable" in m for m in warnings)
    assert any(str(future) in m and "schema_version" in m for m in warnings)
    assert any(str(running) in r.getMessage() for r in caplog.records)


def test_empty_dir_raises_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoRecordsError, match=r"no record\.json under .*python -m bench run"):
        build_site(empty, tmp_path / "site")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_site(tmp_path / "missing", tmp_path / "site")


def test_duplicate_generator_labels_and_floor_note(tmp_path, caplog):
    runs = tmp_path / "runs"
    for seed, fid_floor in ((0, 0.009), (1, 0.011)):
        rec = _record(f"quick-retrieval-s{seed}", "retrieval", {"k": 1},
                      _quick_metrics(0.01 + seed, 0.7, 0.004, fid_floor=fid_floor), seed=seed)
        (runs / rec["run_id"]).mkdir(parents=True)
        (runs / rec["run_id"] / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    with caplog.at_level(logging.DEBUG, logger="leaderboards"):
        (table,) = build_tables(load_records(runs))
    labels = [r.label for r in table.run_rows]
    assert labels == ["retrieval (k=1) [seed 0]", "retrieval (k=1) [seed 1]"]
    assert math.isclose(table.floor_row.cells["fid"].value, 0.010)
    assert table.notes == ["floors differ across runs for 1 metric (different seeds: 0, 1); "
                           "the floor row shows their mean (fid)"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # tie on ssim: both runs are best
    assert all(r.cells["ssim"].is_best for r in table.run_rows)


def test_separate_tables_per_reference_hash(runs_dir):
    rec = _record("quick-retrieval-other", "retrieval", {"k": 1},
                  _quick_metrics(0.02, 0.7, 0.004), content_hash="ffff0000")
    (runs_dir / rec["run_id"]).mkdir()
    (runs_dir / rec["run_id"] / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    tables = build_tables(load_records(runs_dir))
    assert [(t.suite, t.reference_hash) for t in tables] == [
        ("full", PHANTOM_HASH), ("quick", PHANTOM_HASH), ("quick", "ffff0000")]


def test_package_does_not_import_other_packages():
    code = (
        "import sys, leaderboards, leaderboards.html, leaderboards.markdown, leaderboards.csv;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('bench', 'generators', 'metrics')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(leaderboards.__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# run folders with samples, a tiny cohort, metric details and explain maps
# --------------------------------------------------------------------------------------------

SHAPE = (16, 20, 18)
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f4e4d50000000049454e44ae426082")


def _phantom(rng, shape=SHAPE):
    """A blob-shaped 'brain' in [0, 1] with some noise."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    r = np.sqrt(x ** 2 + (y / 1.1) ** 2 + (z / 0.9) ** 2)
    vol = np.clip(1.0 - r, 0, 1) * 0.8 + 0.1 * (r < 0.9)
    return (vol + rng.normal(0, 0.03, shape)).clip(0, 1).astype(np.float32)


def make_cohort(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A tiny cohort folder: manifest.csv (subject_id, image), images/*.nii.gz, brain_mask.nii.gz."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["subject_id,split,image"]
    for i in range(n):
        sid = f"phantom-{i:04d}"
        nib.save(nib.Nifti1Image(_phantom(rng), np.eye(4)), str(root / "images" / f"{sid}.nii.gz"))
        rows.append(f"{sid},test,images/{sid}.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    mask = (_phantom(np.random.default_rng(99)) > 0.05).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(root / "brain_mask.nii.gz"))
    return root


def make_run_folder(runs: Path, rec: dict, cohort: Path | None, *, n: int = 6, seed: int = 0,
                    explain: bool = False) -> Path:
    """Write record.json + samples/shard_0000.npz (+ explain/) for a record; returns the run folder."""
    rng = np.random.default_rng(seed + 1)
    ids = [f"phantom-{i:04d}" for i in range(n)]
    rec = dict(rec)
    rec["prompts"] = [{"subject_id": s, "text": f"Synthetic phantom. T1 <i>{s}</i>"} for s in ids]
    if cohort is not None:
        rec["reference"] = dict(rec["reference"], path=str(cohort))
    d = runs / rec["run_id"]
    (d / "samples").mkdir(parents=True)
    vols = np.stack([_phantom(rng)[None] for _ in ids])
    np.savez(d / "samples" / "shard_0000.npz", volumes=vols, subject_ids=np.array(ids))
    if explain:
        (d / "explain").mkdir()
        (d / "explain" / "hippocampus.png").write_bytes(PNG_1PX)
        (d / "explain" / "fake.png").write_bytes(b"not a png")
        (runs / "secret.png").write_bytes(PNG_1PX)
        (d / "explain" / "index.json").write_text(json.dumps({
            "hippocampus": ["hippocampus.png"], EVIL: ["fake.png"], "escape": ["../../secret.png"]}))
    (d / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    return d


def rich_metrics(fid: float, ssim: float) -> dict:
    """Quick metrics plus details: radiomics top effects, a latent embedding, conformance."""
    m = _quick_metrics(fid, ssim, 0.004)
    m["radiomics"] = _metric(15.0, 3.0, 12.0, False, family="radiomics", details={
        "top_effects": [{"feature": "original_firstorder_Entropy", "d": 1.8},
                        {"feature": "original_glcm_Contrast", "d": -2.4},
                        {"feature": EVIL, "d": 0.5}]})
    m["latent/fd"] = _metric(2.0, 0.5, 1.0, False, family="latent_similarity", details={
        "embedding": {"generated": [[0.1, 0.2], [0.3, -0.1], [-0.2, 0.0]],
                      "reference": [[0.0, 0.1], [0.2, -0.2], [-0.1, 0.3]],
                      "method": "pca", "explained_variance": [0.6, 0.2]}})
    m["conditioning/age"] = _metric(3.0, 1.0, 2.0, False, family="conditioning", details={
        "requested": [30, 50, 70], "measured": [33, 48, 75]})
    return m


@pytest.fixture()
def rich_site(tmp_path: Path) -> dict:
    runs = tmp_path / "runs"
    cohort = make_cohort(tmp_path / "cohort")
    make_run_folder(runs, _record("quick-rich-1", "retrieval", {}, rich_metrics(0.02, 0.7)), cohort,
                    explain=True)
    make_run_folder(runs, _record("quick-nocohort-2", "template", {}, _quick_metrics(0.3, 0.5, 0.01)),
                    None, seed=3)
    return build_site(runs, tmp_path / "site")


def test_run_page_artefacts(rich_site):
    page = (rich_site["runs"] / "quick-rich-1.html").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in (rich_site["runs"] / "quick-rich-1").glob("*.png"))
    assert [p for p in pngs if p.startswith("montage_")] == [f"montage_{i}.png" for i in range(4)]
    for i in range(4):
        assert f'src="quick-rich-1/montage_{i}.png"' in page
    assert '<script src="../assets/plotly.min.js"' in page
    for fig_id in ("fig-hist", "fig-effects-radiomics", "fig-embed-latent_fd", "fig-conf-conditioning_age"):
        assert f'data-target="{fig_id}"' in page, fig_id
    # radiomics effects: largest |d| first, escaped in the table
    table = page[page.index("<summary>Table (radiomics)"):]
    assert table.index("original_glcm_Contrast") < table.index("original_firstorder_Entropy")
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # provenance: checkpoint hash line, extractor weights hash, cohort hash
    assert "Provenance" in page and "f" * 64 in page and PHANTOM_HASH in page
    # explain: only the real PNG inside explain/ is copied; traversal and fakes are ignored
    assert pngs.count("explain_000.png") == 1 and len([p for p in pngs if p.startswith("explain_")]) == 1
    assert "Cross-attention maps" in page and "<code>hippocampus</code>" in page


def test_run_page_without_cohort_or_details(rich_site):
    page = (rich_site["runs"] / "quick-nocohort-2.html").read_text(encoding="utf-8")
    # montages of the generated volumes only, with a note; no histogram; reasons listed
    assert 'src="quick-nocohort-2/montage_0.png"' in page and "real image not available" in page
    assert 'data-target="fig-hist"' not in page
    assert "Not shown" in page and "no explain/index.json" in page
    assert "conformance plots: no metric recorded requested/measured values" in page


def test_histogram_and_mid_slices():
    from leaderboards.artefacts import masked_histogram, mid_slices

    vol = np.zeros((4, 6, 8), dtype=np.float32)
    ax, cor, sag = mid_slices(vol)
    assert ax.shape == (6, 4) and cor.shape == (8, 4) and sag.shape == (8, 6)
    vols = np.full((2, 4, 6, 8), 0.25, dtype=np.float32)
    mask = np.zeros((4, 6, 8), bool)
    mask[1:3] = True
    edges = np.linspace(0, 1, 5)
    h = masked_histogram(vols, mask, edges)
    assert np.isclose((h * np.diff(edges)).sum(), 1.0) and h.argmax() == 1


def test_csv_formula_injection(tmp_path):
    from leaderboards.csv import safe_text

    assert safe_text("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert [safe_text(x) for x in ("+1", "-x", "@SUM", "ok", "")] == ["'+1", "'-x", "'@SUM", "ok", ""]
    runs = tmp_path / "runs"
    rec = _record("quick-evil", '=cmd|" /C calc"!A0', {"x": 1},
                  {"kid": _metric(-0.001, 0.0005, 0.0, False)})
    (runs / rec["run_id"]).mkdir(parents=True)
    (runs / rec["run_id"] / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    out = build_site(runs, tmp_path / "site")
    with out["csv"].open(encoding="utf-8", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["generator"] == "'=cmd|\" /C calc\"!A0"
    assert row["value"] == "-0.001"  # numbers stay numbers


# --------------------------------------------------------------------------------------------
# honest ranking: comparability, headline first, gated stars, target metrics, floors, charts
# --------------------------------------------------------------------------------------------

from leaderboards.charts import metric_bounds, table_figures, unique_labels  # noqa: E402

#: A hand-written metric validation report (the ``validation.json`` of ``python -m bench validate``).
VALIDATION = {
    "schema_version": 1, "suite": {"name": "quick", "version": 1},
    "reference": {"name": "phantom", "content_hash": PHANTOM_HASH}, "n": 16, "seed": 0,
    "corruptions": {"noise": {"levels": [0.02, 0.05, 0.1], "unit": "sigma", "description": "Gaussian noise"},
                    "bias": {"levels": [0.1, 0.2, 0.4], "unit": "amplitude", "description": "bias field"},
                    "shift": {"levels": [1, 2, 4], "unit": "voxels", "description": "translation"},
                    EVIL: {"levels": [1], "unit": "", "description": "<b>x</b>"}},
    "floor": {"fid-deepbet": {"value": 0.18, "ci": [0.1, 0.3], "direction": "lower"},
              "radiomics": {"value": 0.45, "ci": [0.35, 0.55], "direction": "lower"},
              "ms_ssim_diversity": {"value": 0.3, "ci": [0.28, 0.32], "direction": "target"}},
    "seconds": {"fid-deepbet": 1.2, "radiomics": 14.0, "ms_ssim_diversity": 0.25},
    "metrics": {
        "fid-deepbet": {
            "noise": {"levels": [0.02, 0.05, 0.1], "values": [0.2, 0.5, 2.0],
                      "ci": [[0.1, 0.3], [0.4, 0.6], [1.5, 2.5]], "monotone": True, "detected_at": 2},
            "bias": {"levels": [0.1, 0.2, 0.4], "values": [0.19, 0.2, 0.21], "ci": [[0.1, 0.3]] * 3,
                     "monotone": False, "detected_at": None},
            "shift": {"levels": [1, 2, 4], "values": [0.19, 0.25, 0.9],
                      "ci": [[0.1, 0.3], [0.1, 0.35], [0.5, 1.2]], "monotone": True, "detected_at": 3}},
        "radiomics": {"noise": {"detected_at": 1}, "bias": {"detected_at": None},
                      "shift": {"detected_at": None}, EVIL: {"detected_at": 1}},
        "ms_ssim_diversity": {"noise": {"detected_at": 1}, "bias": {"detected_at": 2},
                              "shift": {"detected_at": 1}},
    },
    "headline": {"realism": ["radiomics", "fid-deepbet"]},
}


@pytest.fixture()
def honest_site(tmp_path: Path) -> dict:
    """Runs of N=16 and N=8 (same suite), each with a memorising baseline and a copying folder run."""
    runs = write_runs(tmp_path / "runs", honest_runs(16) + honest_runs(8, seed=1))
    return build_site(runs, tmp_path / "site", validation=VALIDATION)


def test_runs_of_different_n_never_share_a_ranking(honest_site, tmp_path):
    tables = build_tables(load_records(tmp_path / "runs"))
    assert [(t.suite, t.n) for t in tables] == [("quick", 8), ("quick", 16)]
    assert [t.title for t in tables] == [f"quick v1 · N={n} · 3mm · phantom ({PHANTOM_HASH[:12]})" for n in (8, 16)]
    for t in tables:
        assert {r.n for r in t.run_rows} == {t.n} and len(t.run_rows) == 5
        assert all(r.run_id.startswith(f"n{t.n}-") for r in t.run_rows)
    index = honest_site["index"].read_text(encoding="utf-8")
    for n in (8, 16):
        for which in ("headline", "full"):
            table = _table_html(index, "quick", n, which)
            assert '<th class="num" data-type="num" scope="col" tabindex="0" title="number of prompts' in table
            assert table.count(f'<td class="num n" data-v="{n}">{n}</td>') == 5
            assert table.count('<tr class="run"') == 5
    md = honest_site["markdown"].read_text(encoding="utf-8")
    assert "### quick v1 · N=8 · 3mm" in md and "### quick v1 · N=16 · 3mm" in md
    assert md.index("N=8") < md.index("N=16")


def test_headline_first_with_floor_ratio(honest_site):
    index = honest_site["index"].read_text(encoding="utf-8")
    head = _table_html(index, "quick", 16)
    # headline columns in axis order, each with its axis label
    keys = re.findall(r'<span class="axis">(\w+)</span>([^<]+?) <span class="dir">', head)
    assert [(a, k.replace("\u200b", "")) for a, k in keys] == [
        ("realism", "radiomics"), ("realism", "fid-deepbet"), ("diversity", "prdc-deepbet/recall"),
        ("diversity", "ms_ssim_diversity"), ("conformance", "conformance/modality_accuracy"),
        ("privacy", "memorization-deepbet")]
    assert "kid-deepbet" not in head and "kid-deepbet" in _table_html(index, "quick", 16, "full")
    # ×floor: template's fid 27.2 against the floor 0.18 is ×151, outside the floor on the worse side
    assert '<span class="ratio vs-worse" title="×151 = value / real-vs-real floor (0.18)' in head
    assert "×151 ✗</span>" in head
    # what the report card says the headline metric misses
    assert '<span class="blind"' in head and "blind to: bias, shift</span>" in head  # radiomics
    assert "blind to: bias</span>" in head  # fid-deepbet
    md = honest_site["markdown"].read_text(encoding="utf-8")
    assert ("| Generator | Role | N | realism: radiomics ↓ | realism: fid-deepbet ↓ "
            "| diversity: prdc-deepbet/recall ↑ | diversity: ms\\_ssim\\_diversity target: real |") in md
    assert "· ×151 ✗" in md and "radiomics — blind to: bias, shift" in md
    # the CSV leads each run with its headline metrics
    with honest_site["csv"].open(encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["run_id"] == "n16-template"]
    assert [r["metric"] for r in rows[:6]] == ["radiomics", "fid-deepbet", "prdc-deepbet/recall",
                                               "ms_ssim_diversity", "conformance/modality_accuracy",
                                               "memorization-deepbet"]
    assert all(r["headline"] == "true" for r in rows[:6]) and rows[6]["headline"] == "false"
    fid = rows[1]
    assert fid["versus_floor"] == "worse" and fid["N"] == "16" and fid["role"] == "baseline"
    assert math.isclose(float(fid["ratio_to_floor"]), 27.2 / 0.18)


def test_better_than_real_is_flagged(tmp_path):
    rec = _record("odd", "slice2d", {}, suite_metrics(0.2), role="baseline", headline=HEADLINE)
    rec["metrics"]["radiomics"].update(value=0.1, ci_low=0.05, ci_high=0.15)  # floor 0.45 ± 0.1
    out = build_site(write_runs(tmp_path / "runs", [rec]), tmp_path / "site")
    (table,) = build_tables(load_records(tmp_path / "runs"))
    cell = table.run_rows[0].cells["radiomics"]
    assert cell.versus == "better" and cell.ratio_text() == "×0.222"
    assert "suspicious" in cell.versus_title()
    head = _table_html(out["index"].read_text(encoding="utf-8"), "quick")
    assert re.search(r'<span class="ratio vs-better" title="[^"]*suspicious[^"]*">×0.222 ⚠ better than real</span>',
                     head)
    assert "×0.222 ⚠ better than real" in out["markdown"].read_text(encoding="utf-8")


def test_oracles_are_shown_but_never_starred(tmp_path):
    """An autoencoder round trip of the held-out volumes beats every generator on realism (it sees the
    answers) and passes the memorisation gate; it is ranked first yet never gets a star."""
    runs = [_record("oracle", "ldm3d-recon", {}, suite_metrics(0.02), role="oracle", headline=HEADLINE),
            _record("model", "ldm3d", {}, suite_metrics(0.1), role="reference-model", headline=HEADLINE),
            _record("pca", "pca", {}, suite_metrics(0.4), role="baseline", headline=HEADLINE)]
    (table,) = build_tables(load_records(write_runs(tmp_path / "runs", runs)))
    rows = {r.generator: r for r in table.run_rows}
    assert [r.generator for r in table.run_rows] == ["ldm3d-recon", "ldm3d", "pca"]
    assert rows["ldm3d-recon"].gate is True and not rows["ldm3d-recon"].may_star
    assert not any(c.is_best for c in rows["ldm3d-recon"].cells.values())
    assert rows["ldm3d"].cells["fid-deepbet"].is_best and rows["ldm3d"].cells["radiomics"].is_best


def test_stars_only_for_runs_passing_the_memorisation_gate(honest_site, tmp_path):
    for t in build_tables(load_records(tmp_path / "runs")):
        rows = {r.generator: r for r in t.run_rows}
        assert rows["retrieval"].role == "memorising baseline" and rows["retrieval"].gate is False
        assert rows["folder"].role == "external" and rows["folder"].gate is False
        assert "interval above the real-data rate" in rows["folder"].gate_reason
        assert rows["ldm3d"].gate is True and rows["ldm3d"].role == "reference-model"
        for r in (rows["retrieval"], rows["folder"]):
            assert not any(c.is_best for c in r.cells.values()), r.generator
        # retrieval copies real volumes: it is the best on fid, yet the star goes to ldm3d
        assert rows["retrieval"].cells["fid-deepbet"].value < rows["ldm3d"].cells["fid-deepbet"].value
        assert rows["ldm3d"].cells["fid-deepbet"].is_best
        # ranked on the first headline realism metric (radiomics); the trap runs keep their place
        assert t.rank_key == "radiomics"
        assert [r.generator for r in t.run_rows] == ["retrieval", "folder", "ldm3d", "pca", "template"]
    index = honest_site["index"].read_text(encoding="utf-8")
    for n in (8, 16):
        for which in ("headline", "full"):
            for run in ("retrieval", "folder"):
                tr = re.search(rf'<tr class="run" data-run="n{n}-{run}".*?</tr>',
                               _table_html(index, "quick", n, which), re.S).group(0)
                classes = [c.split() for c in re.findall(r'<td class="([^"]*)"', tr)]
                assert len(classes) > 3 and not any("best" in c for c in classes)
                assert "memorisation: " in tr
    assert '<span class="role role-memorising-baseline" title="generator role: memorising baseline">' in index
    assert '<span class="role role-external"' in index
    assert "memorisation: memorising baseline (copies training data by design)" in index
    md = honest_site["markdown"].read_text(encoding="utf-8")
    retrieval = [ln for ln in md.splitlines() if ln.startswith("| retrieval")]
    assert retrieval and all("★" not in ln and "| memorising baseline |" in ln for ln in retrieval)
    assert all("memorisation: " in ln for ln in retrieval)
    with honest_site["csv"].open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert not [r for r in rows if r["generator"] in ("retrieval", "folder") and r["best"] == "true"]
    assert {r["memorisation_gate"] for r in rows if r["generator"] == "folder"} == {"failed"}


def test_target_metric_ranks_by_distance_to_the_floor(tmp_path):
    headline = {"diversity": ["ms_ssim_diversity"]}
    recs = [_record(f"run-{name}", name, {}, suite_metrics(0.3, diversity=d), role="baseline", headline=headline)
            for name, d in (("collapsed", 0.9), ("near", 0.31), ("noisy", 0.05), ("close", 0.27))]
    (table,) = build_tables(recs)
    assert table.rank_key == "ms_ssim_diversity"
    # floor 0.30: |0.31-0.3| < |0.27-0.3| < |0.05-0.3| < |0.9-0.3|
    assert [r.generator for r in table.run_rows] == ["near", "close", "noisy", "collapsed"]
    assert [r.generator for r in table.run_rows if r.cells["ms_ssim_diversity"].is_best] == ["near"]
    col = table.column("ms_ssim_diversity")
    assert col.direction == "target" and col.arrow == "target: real" and col.higher_is_better is None
    out = build_site(write_runs(tmp_path / "runs", recs), tmp_path / "site")
    head = _table_html(out["index"].read_text(encoding="utf-8"), "quick")
    assert 'ms_ssim_diversity <span class="dir">target: real</span>' in head.replace("\u200b", "")  # header breaks at _ and /
    assert "↑</span>" not in head and "↓</span>" not in head
    # sorting a target column sorts by its distance to the floor (data-v), not by the value
    near = re.search(r'<tr class="run" data-run="run-near".*?</tr>', head, re.S).group(0)
    assert math.isclose(float(re.findall(r'<td class="num[^"]*" data-v="([^"]+)"', near)[1]), 0.01)
    assert "ms\\_ssim\\_diversity target: real" in out["markdown"].read_text(encoding="utf-8")


def test_differing_floors_collapse_to_one_line(tmp_path, caplog):
    recs = [_record(f"run-{s}", "pca", {"k": s}, suite_metrics(0.3, floor_shift=0.01 * s), seed=s,
                    role="baseline", headline=HEADLINE) for s in range(3)]
    runs = write_runs(tmp_path / "runs", recs)
    with caplog.at_level(logging.DEBUG, logger="leaderboards"):
        out = build_site(runs, tmp_path / "site")
    (table,) = build_tables(load_records(runs))
    assert len(table.notes) == 1
    assert table.notes[0].startswith("floors differ across runs for 15 metrics (different seeds: 0, 1, 2); "
                                     "the floor row shows their mean (")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "floor" in r.getMessage()]
    assert len(logged) == 1  # one line for the one table, not one per metric
    index = out["index"].read_text(encoding="utf-8")
    assert index.count('<p class="note">⚠ floors differ') == 1 and "floor of " not in index
    md = out["markdown"].read_text(encoding="utf-8")
    assert md.count("> ⚠ floors differ") == 1
    assert math.isclose(table.floor_row.cells["radiomics"].value, 0.45 * 1.01)


def test_unique_labels_never_collide():
    long = "a-generator-with-a-very-long-name (arg=1)"
    labels = unique_labels([long, long + "x", long + "y", "short", "short"], limit=28)
    assert len(set(labels)) == 5 and all(len(s) <= 28 for s in labels)
    assert labels[0].endswith("…") and labels[1].endswith(" #2") and labels[2].endswith(" #3")
    assert labels[3:] == ["short", "short #2"]


def _long_name_runs() -> list[dict]:
    name = "diffusion-model-with-a-long-name"
    return [_record(f"run-{i}", name, {"checkpoint": f"/very/long/path/epoch_{i}.pt"},
                    suite_metrics(0.1 * i), role="baseline", headline=HEADLINE) for i in range(3)]


def test_charts_one_bar_per_run_grouped_with_error_bars():
    (table,) = build_tables(_long_name_runs())
    figs = table_figures(table)
    assert len(figs) == len(table.columns)
    for fig, col in zip(figs, table.columns):
        (bar,) = fig["data"]
        assert fig["layout"]["barmode"] == "group" and bar["type"] == "bar"
        assert len(bar["x"]) == len(set(bar["x"])) == 3  # one bar per run, distinct labels
        assert fig["layout"]["xaxis"]["type"] == "category"
        assert bar["error_y"]["array"] and bar["error_y"]["arrayminus"]
        (floor,) = fig["layout"]["shapes"]  # the floor: a horizontal line
        assert floor["y0"] == floor["y1"] == table.floor_row.cells[col.key].value
        assert (floor["x0"], floor["x1"], floor["xref"]) == (0, 1, "paper")


def test_bounded_axes_rule():
    assert metric_bounds("prdc-deepbet/recall", "prdc", [0.2, 0.9]) == (0.0, 1.0)
    assert metric_bounds("prdc-deepbet/precision", "prdc", [1.0, 0.0]) == (0.0, 1.0)
    assert metric_bounds("prdc-deepbet/coverage", "prdc", [0.5]) == (0.0, 1.0)
    assert metric_bounds("prdc-deepbet/density", "prdc", [0.5, 0.9]) is None  # density is unbounded
    assert metric_bounds("ssim", "ssim", [0.8]) == (0.0, 1.0)
    assert metric_bounds("ms_ssim_diversity", "ms_ssim_diversity", [0.3]) == (0.0, 1.0)
    assert metric_bounds("conformance/modality_accuracy", "conformance", [0.98]) == (0.0, 1.0)
    assert metric_bounds("memorization-deepbet", "memorization", [1.0, 0.05]) == (0.0, 1.0)
    assert metric_bounds("conformance/age_r", "conformance", [0.8, -0.2]) == (-1.0, 1.0)
    assert metric_bounds("conformance/age_mae", "conformance", [0.5]) is None
    assert metric_bounds("fid-deepbet", "fid", [0.5]) is None
    assert metric_bounds("radiomics", "radiomics", [0.5]) is None
    assert metric_bounds("prdc-deepbet/recall", "prdc", [0.2, 1.5]) is None  # a value outside: free axis
    assert metric_bounds("prdc-deepbet/recall", "prdc", [None]) is None


def test_bounded_axes_in_figure_json(honest_site):
    index = honest_site["index"].read_text(encoding="utf-8")
    figs = [json.loads(b) for b in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', index, re.S)]
    by_key = {}
    for f in figs:
        key = re.sub(r"<[^>]+>", "", f["layout"]["title"]["text"]).split(" ")[0]
        by_key.setdefault(key, []).append(f)
    assert len(by_key) == 15 and all(len(v) == 2 for v in by_key.values())  # 15 metrics x 2 tables
    bounded = {"prdc-deepbet/precision": [0, 1], "prdc-deepbet/recall": [0, 1], "prdc-deepbet/coverage": [0, 1],
               "ssim": [0, 1], "ms_ssim_diversity": [0, 1], "conformance/modality_accuracy": [0, 1],
               "memorization-deepbet": [0, 1], "conformance/age_r": [-1, 1]}
    for key, fs in by_key.items():
        for f in fs:
            assert f["layout"]["barmode"] == "group"
            assert len(f["data"][0]["x"]) == len(set(f["data"][0]["x"])) == 5
            if key in bounded:
                assert f["layout"]["yaxis"]["range"] == bounded[key], key
                lo, hi = bounded[key]
                assert all(lo <= y <= hi for y in f["data"][0]["y"]), key
            else:
                assert "range" not in f["layout"]["yaxis"], key
    # headline charts are visible, the other metrics' charts sit in the collapsed details
    sec = _section_html(index, "quick", 16)
    details = sec[sec.index('<details class="full">'):]
    assert sec[: sec.index('<details class="full">')].count('class="plot-data"') == 6
    assert details.count('class="plot-data"') == 15 - 6


def test_long_labels_stay_distinct_in_site(tmp_path):
    out = build_site(write_runs(tmp_path / "runs", _long_name_runs()), tmp_path / "site")
    index = out["index"].read_text(encoding="utf-8")
    for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', index, re.S):
        xs = json.loads(block)["data"][0]["x"]
        assert len(xs) == len(set(xs)) == 3


def test_validation_page(honest_site):
    page = honest_site["validation"].read_text(encoding="utf-8")
    index = honest_site["index"].read_text(encoding="utf-8")
    assert '<a href="validation.html">' in index and '<a href="index.html">' in page
    assert EVIL not in page and "<b>x</b>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    rows = dict(re.findall(r'<tr data-metric="([^"]+)">(.*?)</tr>', page, re.S))
    assert list(rows) == ["radiomics", "fid-deepbet", "ms_ssim_diversity"]  # headline metrics first
    cls = {k: re.findall(r'<td class="det (det-[\w-]+)"', v) for k, v in rows.items()}
    # columns: noise, bias, shift, the evil corruption
    assert cls["fid-deepbet"] == ["det-2", "det-none", "det-3", "det-na"]
    assert cls["radiomics"] == ["det-1", "det-none", "det-none", "det-1"]
    assert cls["ms_ssim_diversity"] == ["det-1", "det-2", "det-1", "det-na"]
    fid = rows["fid-deepbet"]
    assert ">0.18 [0.1, 0.3]</td>" in fid and ">1.2</td>" in fid  # floor and seconds per run
    assert "headline · realism" in fid and "blind to: bias" in fid
    assert "level 2 (0.05 sigma): 0.5 [0.4, 0.6]" in fid  # the values behind the colour, on hover
    assert "NOT monotone" in fid
    assert ">14</td>" in rows["radiomics"] and "target: real" in rows["ms_ssim_diversity"]
    for swatch in ("det-1", "det-2", "det-3", "det-none", "det-na"):
        assert f'<span class="swatch {swatch}">' in page  # the legend


def test_no_validation_no_page(site):
    index = site["index"].read_text(encoding="utf-8")
    assert "validation.html" not in index and 'class="blind"' not in index
    assert not site["index"].with_name("validation.html").exists() and "validation" not in site


def test_validation_from_a_path(tmp_path):
    from leaderboards import load_validation

    path = tmp_path / "validation.json"
    path.write_text(json.dumps(VALIDATION), encoding="utf-8")
    assert load_validation(path)["n"] == 16
    runs = write_runs(tmp_path / "runs", honest_runs(16))
    out = build_site(runs, tmp_path / "site", validation=path)
    assert out["validation"].is_file()
    (tmp_path / "bad.json").write_text(json.dumps({"schema_version": 7}), encoding="utf-8")
    with pytest.raises(ValueError, match="schema_version"):
        load_validation(tmp_path / "bad.json")


def test_run_page_shows_role_gate_and_floor_ratio(honest_site):
    page = (honest_site["runs"] / "n16-folder.html").read_text(encoding="utf-8")
    assert "<dt>Role</dt><dd><code>external</code></dd>" in page
    assert "FAILED (never starred): memorization-deepbet = 1, interval above the real-data rate" in page
    assert "×20" in page  # memorisation 1.0 against the floor 0.05

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
            content_hash=PHANTOM_HASH, status="complete"):
    return {
        "schema_version": 1,
        "run_id": run_id,
        "created": "2026-11-22T08:00:00Z",
        "status": status,
        "generator": {"name": generator, "args": args,
                      "info": {"checkpoint_sha256": None, "description": f"{generator} baseline"}},
        "suite": {"name": suite, "version": 1,
                  "grid": {"name": "3mm", "voxel_size": 3.0, "shape": [48, 64, 56]},
                  "n_prompts": 16},
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


def _table_html(index: str, suite: str) -> str:
    start = index.index(f"Suite <code>{suite}</code>")
    return index[start: index.index("</table>", start)]


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
    quick = _table_html(index, "quick")
    assert quick.count('<tr class="run">') == 3
    assert quick.count('<tr class="floor">') == 1
    full = _table_html(index, "full")
    assert full.count('<tr class="run">') == 1
    assert full.count('<tr class="floor">') == 1
    assert "SYNTHETIC" in index
    assert "fid ↓" in index and "ssim ↑" in index
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
    quick = _table_html(site["index"].read_text(encoding="utf-8"), "quick")
    best_cells = re.findall(r'<td class="num best"[^>]*><strong>([^<]*)</strong><span class="ci">([^<]*)<',
                            quick)
    # retrieval row (ranked first): fid and w1; evil row: ssim
    assert best_cells == [("0.012", "± 0.002"), ("0.004", "± 0.001"), ("0.75", "± 0.03")]


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
    assert "| retrieval (k=1) | — |" in md
    page = (site["runs"] / "full-retrieval-aaaa0000.html").read_text(encoding="utf-8")
    assert "error: extractor failed: out of memory" in page


def test_markdown_rows_bold_and_escaping(runs_dir):
    md = to_markdown(build_tables(load_records(runs_dir)))
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    # quick: header + separator + 3 runs + floor; full: header + separator + 1 run + floor
    assert len(table_lines) == 6 + 4
    assert "| Generator | fid ↓ | ssim ↑ | histogram/w1 ↓ |" in md
    assert "**0.012 ± 0.002**" in md and "**0.75 ± 0.03**" in md
    floor_lines = [ln for ln in table_lines if "real vs real (floor)" in ln]
    assert len(floor_lines) == 2 and not any("**" in ln for ln in floor_lines)
    assert "<script>" not in md and "&lt;script&gt;" in md
    # tables are sorted by suite: "full" (3 columns incl. label) then "quick" (4 columns);
    # every line has as many unescaped pipes as its header, even the malicious one
    for ln in table_lines[:4]:
        assert len(re.findall(r"(?<!\\)\|", ln)) == 4, ln
    for ln in table_lines[4:]:
        assert len(re.findall(r"(?<!\\)\|", ln)) == 5, ln
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
    with caplog.at_level(logging.WARNING, logger="leaderboards"):
        (table,) = build_tables(load_records(runs))
    labels = [r.label for r in table.run_rows]
    assert labels == ["retrieval (k=1) [seed 0]", "retrieval (k=1) [seed 1]"]
    assert math.isclose(table.floor_row.cells["fid"].value, 0.010)
    assert any("floor of 'fid' differs" in n for n in table.notes)
    assert any("differs" in r.getMessage() for r in caplog.records)
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

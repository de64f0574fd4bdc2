"""Report-generation runs (task ``report``: a captioner describes real volumes) on the leaderboard site:
their own section of the index, ranked on the clinical axis, and run pages that show each report beside
its volume and true caption with the wrong statements marked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from core.record import validate_record
from leaderboards import build_site, build_tables, to_markdown
from leaderboards.reports import card, locate, mark
from test_leaderboards import EVIL, _m, _record, honest_runs, make_cohort, write_runs

HEADLINE = {"clinical": ["report_clinical/accuracy", "report_clinical/hallucination"],
            "text": ["report_text/bleu1", "report_text/embedding_cosine"]}
TOLERANCES = {"age": 10.0, "lateral_ventricles": 2.0, "hippocampus_left": 0.4}


def caption(age: int, sex: str, lv: float, hl: float, modality: str = "T1-weighted") -> str:
    who = "woman" if sex == "F" else "man"
    return (f"Synthetic phantom. {modality} brain MRI of a {age}-year-old {who}. Lateral ventricles {lv:.1f} mL "
            f"(40th percentile), left hippocampus {hl:.1f} mL (50th percentile); grey matter 620.4 mL.")


def _s(outcome: str, stated, true) -> dict:
    return {"outcome": outcome, "stated": stated, "true": true}


def reports_and_statements() -> tuple[list[dict], list[dict]]:
    """Three described volumes: one with a wrong age and a wrong volume (and a script in its text), one
    with a statement left out, one whose subject is not in the cohort."""
    reports = [
        {"subject_id": "phantom-0000",
         "report": caption(52, "M", 30.5, 4.1) + " " + EVIL,
         "caption": caption(38, "M", 25.1, 4.2),
         "floor_subject_id": "phantom-0003", "floor_caption": caption(60, "F", 40.0, 3.5)},
        {"subject_id": "phantom-0001",
         "report": "Synthetic phantom. T1-weighted brain MRI of a 41-year-old woman. Lateral ventricles 20.0 mL.",
         "caption": caption(40, "F", 20.2, 3.9),
         "floor_subject_id": "phantom-0004", "floor_caption": caption(70, "M", 45.0, 3.1)},
        {"subject_id": "phantom-9999",
         "report": caption(30, "F", 18.0, 4.5), "caption": caption(31, "F", 18.1, 4.4)},
    ]
    statements = [
        {"modality": _s("correct", "T1", "T1"), "sex": _s("correct", "M", "M"), "age": _s("wrong", 52.0, 38.0),
         "lateral_ventricles": _s("wrong", 30.5, 25.1), "hippocampus_left": _s("correct", 4.1, 4.2),
         EVIL: _s("wrong", "<b>bold</b>", "x")},
        {"modality": _s("correct", "T1", "T1"), "sex": _s("correct", "F", "F"), "age": _s("correct", 41.0, 40.0),
         "lateral_ventricles": _s("correct", 20.0, 20.2), "hippocampus_left": _s("missing", None, 3.9)},
        {"modality": _s("correct", "T1", "T1"), "sex": _s("correct", "F", "F"), "age": _s("correct", 30.0, 31.0)},
    ]
    return reports, statements


def report_record(run_id: str, captioner: str, accuracy: float, *, cohort: Path | None,
                  bleu: float = 80.0) -> dict:
    """A report run's record, shaped like the runner writes it (task, captioner, reports, statements)."""
    reports, statements = reports_and_statements()
    metrics = {
        "report_clinical/accuracy": _m(accuracy, 0.03, 0.48, "higher", "clinical", "report_clinical",
                                       floor_half=0.05, details={"statements": statements, "tolerances": TOLERANCES}),
        "report_clinical/hallucination": _m(1 - accuracy, 0.03, 0.52, "lower", "clinical", "report_clinical",
                                            floor_half=0.05),
        "report_text/bleu1": _m(bleu, 0.4, 79.6, "higher", "text", "report_text", floor_half=0.4),
        "report_text/embedding_cosine": _m(0.99, 0.001, 0.988, "higher", "text", "report_text", floor_half=0.002),
    }
    rec = _record(run_id, captioner, {}, metrics, suite="report-quick", n_prompts=48, role="baseline",
                  headline=HEADLINE)
    rec.update(task="report", samples_dir="reports", reports=reports, extractors={},
               prompts=[{"subject_id": r["subject_id"], "text": r["caption"]} for r in reports])
    rec["generator"]["kind"] = "captioner"
    rec["reference"]["path"] = str(cohort) if cohort is not None else "/nonexistent/cohort"
    validate_record(rec)
    return rec


@pytest.fixture()
def mixed(tmp_path: Path) -> dict:
    """A site of the honest text-to-volume runs plus two captioners (the worse one written first), and a
    site of the text-to-volume runs alone."""
    cohort = make_cohort(tmp_path / "cohort")
    gen = honest_runs()
    reps = [report_record("rq-prior", "cohort-prior", 0.51, cohort=cohort, bleu=79.7),
            report_record("rq-measure", "measure-and-describe", 0.97, cohort=cohort, bleu=82.3)]
    both = build_site(write_runs(tmp_path / "runs", gen + reps), tmp_path / "site")
    alone = build_site(write_runs(tmp_path / "runs_gen", gen), tmp_path / "site_gen")
    return {"site": both, "gen_only": alone, "index": both["index"].read_text(encoding="utf-8"),
            "tmp": tmp_path}


def _board(index: str, suite: str) -> str:
    """One leaderboard's ``<section>``, whole."""
    start = index.index(f"Suite <code>{suite}</code>")
    return index[index.rindex("<section", 0, start): index.index("</section>", start)]


def _report_section(index: str) -> str:
    return index[index.index('<section id="report-generation"'):]


def test_report_tables_in_their_own_section_ranked_on_clinical(mixed):
    index = mixed["index"]
    assert index.count("Report generation (volume → text)</h2>") == 1
    sec = _report_section(index)
    # after every generator table, with its own header word, ranked on the first clinical metric
    assert index.index("Suite <code>quick</code>") < index.index('<section id="report-generation"')
    assert "Suite <code>quick</code>" not in sec and "Suite <code>report-quick</code>" in sec
    assert ">Captioner</th>" in sec and ">Generator</th>" not in sec
    assert "ranked on <code>report_clinical/accuracy</code>" in sec
    assert sec.index("measure-and-describe") < sec.index("cohort-prior")
    assert "another subject&#39;s caption (floor)" in sec
    # beating the floor (another subject's caption) is the goal, not a sign of a blind metric
    assert "better than real" not in sec and "✓ beats floor" in sec and "≈ floor" in sec
    assert 'class="gen"' in sec and "captioner role: baseline" in sec
    tables = build_tables(json.loads(p.read_text()) for p in (mixed["tmp"] / "runs").rglob("record.json"))
    assert [t.is_report for t in tables] == [False, True]
    assert [r.label for r in tables[1].run_rows] == ["measure-and-describe", "cohort-prior"]
    assert tables[1].headline == HEADLINE and tables[1].rank_key == "report_clinical/accuracy"


def test_text_to_volume_tables_unchanged(mixed):
    alone = mixed["gen_only"]["index"].read_text(encoding="utf-8")
    assert _board(mixed["index"], "quick") == _board(alone, "quick")
    assert mixed["index"].count('<section id="table-') == alone.count('<section id="table-') + 1
    assert "report-generation" not in alone and "Captioner" not in alone
    md_both = mixed["site"]["markdown"].read_text(encoding="utf-8")
    md_alone = mixed["gen_only"]["markdown"].read_text(encoding="utf-8")
    head = md_alone[:md_alone.index("↑ higher is better")]
    assert md_both.startswith(head)
    rest = md_both[len(head):]
    assert rest.startswith("## Report generation (volume → text)") and "| Captioner | Role | N |" in rest
    rows = list(csv.DictReader(mixed["site"]["csv"].open(encoding="utf-8")))
    assert {r["run_id"] for r in rows} >= {"rq-prior", "rq-measure", "n16-ldm3d"}


def test_run_page_marks_wrong_statements_and_escapes(mixed):
    runs = mixed["site"]["runs"]
    page = (runs / "rq-measure.html").read_text(encoding="utf-8")
    sec = page[page.index('<h2 id="reports">Reports</h2>'):page.index("<h2>Feature extractors</h2>")]
    assert "The first 3 of 3 described volumes" in sec
    # the wrong age and the wrong volume are marked in the report, their true values in the caption
    assert '<mark class="wrong" title="age: stated 52 y, true 38 y">52-year-old</mark>' in sec
    assert '<mark class="wrong" title="lateral ventricles: stated 30.5 mL, true 25.1 mL">30.5 mL</mark>' in sec
    assert '<mark class="truth" title="age: stated 52 y, true 38 y">38-year-old</mark>' in sec
    assert '<mark class="unstated" title="left hippocampus: not stated; true 3.9 mL">3.9 mL</mark>' in sec
    assert sec.count('<mark class="wrong" title=') == 2  # correct statements are never marked
    # the statement tables: wrong rows highlighted, missing rows greyed, tolerance shown
    assert ('<tr class="o-wrong"><td>age</td><td class="num">38 y</td><td class="num">52 y</td>'
            '<td class="num tol">± 10 y</td><td>wrong</td></tr>') in sec
    assert '<tr class="o-missing"><td>left hippocampus</td><td class="num">3.9 mL</td><td class="num">—</td>' in sec
    # everything from the record is escaped: the report text, a statement's key and values
    assert EVIL not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sec and "&lt;b&gt;bold&lt;/b&gt;" in sec
    assert "Captioner" in page and "Memorisation gate" not in page and "Generated vs real" not in page
    # the montages of the volumes read from the cohort; the subject missing from it is listed
    assert 'src="rq-measure/report_0.png"' in sec and 'src="rq-measure/report_1.png"' in sec
    assert sorted(p.name for p in (runs / "rq-measure").glob("*.png")) == ["report_0.png", "report_1.png"]
    missing = page[page.index("<h3>Not shown</h3>"):]
    assert "phantom-9999" in missing and "not readable in the reference cohort" in missing
    assert "1 wrong statement(s) not found in the report text" in missing  # the made-up statement


def test_missing_cohort_is_listed(tmp_path):
    rec = report_record("rq-nocohort", "nearest-caption", 0.7, cohort=None)
    site = build_site(write_runs(tmp_path / "runs", [rec]), tmp_path / "site")
    page = (site["runs"] / "rq-nocohort.html").read_text(encoding="utf-8")
    assert page.count("volume not available") == 3 and "report_0.png" not in page
    missing = page[page.index("<h3>Not shown</h3>"):]
    assert "volumes of the reports: the reference cohort folder /nonexistent/cohort" in missing
    index = site["index"].read_text(encoding="utf-8")  # a site of captioners alone
    assert "Report generation (volume → text)</h2>" in index and "1 run in 1 leaderboard" in index


def test_report_without_statements_or_reports(tmp_path):
    rec = report_record("rq-bare", "folder", 0.6, cohort=None)
    del rec["metrics"]["report_clinical/accuracy"]["details"]["statements"]
    other = report_record("rq-empty", "folder2", 0.5, cohort=None)
    other["reports"] = []
    site = build_site(write_runs(tmp_path / "runs", [rec, other]), tmp_path / "site")
    page = (site["runs"] / "rq-bare.html").read_text(encoding="utf-8")
    assert "No statement check recorded for this report." in page and '<mark class="wrong" title=' not in page
    assert "statement check: report_clinical/accuracy recorded no statements" in page
    assert "reports: the record lists no reports" in (site["runs"] / "rq-empty.html").read_text(encoding="utf-8")


def test_locate_formats_stated_values_as_captions_do():
    text = ("Synthetic phantom. T1-weighted brain MRI of an 80-year-old woman with 3 white-matter lesions, "
            "total lesion volume 1.2 mL. Lateral ventricles 1.2 mL (9th percentile), third ventricle 1.0 mL, "
            "fourth ventricle 2.5 mL; grey matter 620.4 mL.")

    def found(key, value):
        span = locate(key, value, text)
        return None if span is None else (text[slice(*span)], span[0])

    assert found("age", 80.0)[0] == "80-year-old"
    assert found("sex", "F")[0] == "woman" and found("sex", "M") is None  # "man" inside "woman" is no match
    assert found("modality", "T1")[0] == "T1-weighted"
    assert found("lesion_count", 3.0)[0] == "3 white-matter lesions"
    assert locate("lesion_volume", 0.0, "a 55-year-old man with no white-matter lesions.") == (23, 46)
    # the same number stated twice: the one after the structure's name
    assert found("lateral_ventricles", 1.2) == ("1.2 mL", text.index("1.2 mL (9th"))
    assert found("lesion_volume", 1.2) == ("1.2 mL", text.index("1.2 mL."))
    assert found("third_ventricle", 1.0)[0] == "1.0 mL" and found("gm", 620.4)[0] == "620.4 mL"
    assert found("fourth_ventricle", 2.0) is None and found("thalamus", 20.0) is None
    assert locate("age", None, text) is None and locate("unknown_key", 620.4, text) is not None


def test_mark_escapes_and_skips_overlaps():
    out = mark("<i>a</i> 5 mL", [(9, 13, "wrong", '"x" <y>'), (10, 12, "wrong", "overlap")])
    assert str(out) == '&lt;i&gt;a&lt;/i&gt; <mark class="wrong" title="&#34;x&#34; &lt;y&gt;">5 mL</mark>'
    c = card({"subject_id": "s", "report": "a 41-year-old man", "caption": "a 40-year-old woman"},
             {"sex": _s("wrong", "M", "F"), "age": _s("correct", 41.0, 40.0)})
    assert c.counts == {"correct": 1, "wrong": 1, "missing": 0} and c.unmarked == 0
    assert '<mark class="wrong" title="sex: stated M, true F">man</mark>' in str(c.report)
    assert "41-year-old" in str(c.report) and str(c.report).count("<mark") == 1
    # one phrase, two wrong statements: one mark naming both
    c = card({"subject_id": "s", "report": "a man with no lesions.", "caption": "a man with 2 lesions, 1.5 mL"},
             {"lesion_count": _s("wrong", 0, 2), "lesion_volume": _s("wrong", 0.0, 1.5)})
    assert ('<mark class="wrong" title="lesion count: stated 0, true 2; lesion volume: stated 0.0 mL, true 1.5 mL">'
            'no lesions</mark>') in str(c.report) and c.unmarked == 0

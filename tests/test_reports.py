"""The ``report`` task: text metrics against their libraries, clinical accuracy's known responses (a
fluent report with wrong volumes scores low), the captioner baselines end to end, the folder captioner."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.runner import RunConfig, run
from cohorts.captions import make_caption, parse_caption
from cohorts.subject import Subject
from metrics.functional import text
from metrics.functional.reports import (band, band_agreement, band_limits, report_scores, statements, tolerances)
from metrics.reports import clinical_results
from tests._helpers import registered_cohort

ROOT = Path(__file__).resolve().parents[1]
N_SUBJECTS = 80  # 52 train / 8 val / 20 test (the cohort of tests/test_conformance.py)

HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him.",
        "T1-weighted brain MRI of a 63-year-old woman. Lateral ventricles 32.1 mL."]
REFS = ["The dog bit the man.", "It was not unexpected.", "The man bit him first.",
        "T1-weighted brain MRI of a 61-year-old woman. Lateral ventricles 30.4 mL."]


# ------------------------------------------------------------------------------- text metrics
@pytest.mark.parametrize("order", [1, 2, 4])
def test_bleu_equals_sacrebleu_corpus_score_on_the_whole_and_on_a_resample(order):
    from sacrebleu.metrics import BLEU

    ref_score = BLEU(max_ngram_order=order).corpus_score(HYPS, [REFS]).score
    assert text.bleu(HYPS, REFS, order) == pytest.approx(ref_score, abs=1e-9)
    idx = np.array([3, 0, 0, 2])  # a bootstrap resample: sums of the per-report statistics
    stats = text.bleu_stats(HYPS, REFS, order)[idx]
    want = BLEU(max_ngram_order=order).corpus_score([HYPS[i] for i in idx], [[REFS[i] for i in idx]]).score
    assert text.corpus_from_stats(stats, "bleu", order) == pytest.approx(want, abs=1e-9)


def test_bleu1_and_rouge_l_by_hand():
    # 5 of 6 unigrams match, equal lengths (no brevity penalty); the LCS "the cat on the mat" is 5 of 6 tokens
    assert text.bleu(["the cat sat on the mat"], ["the cat is on the mat"], 1) == pytest.approx(100 * 5 / 6)
    assert text.rouge_l(["the cat sat on the mat"], ["the cat is on the mat"])[0] == pytest.approx(5 / 6)
    # brevity penalty: a 3-token hypothesis of a 6-token reference, all unigrams matching -> exp(1 - 6/3)
    assert text.bleu(["the cat sat"], ["the cat sat on the mat"], 1) == pytest.approx(100 * np.exp(1 - 2))


def test_chrf_and_rouge_equal_their_libraries():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import CHRF

    assert text.chrf(HYPS, REFS) == pytest.approx(CHRF().corpus_score(HYPS, [REFS]).score, abs=1e-9)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)]
    np.testing.assert_allclose(text.rouge_l(HYPS, REFS), want, atol=1e-12)
    with pytest.raises(ValueError, match="paired"):
        text.bleu(HYPS, REFS[:2])


def test_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(text.cosine(a, np.array([[2.0, 0.0], [-1.0, -1.0]])), [1.0, -1.0])


# ------------------------------------------------------------------------------- clinical accuracy
def _subject(**kw) -> Subject:
    base = dict(subject_id="s", split="test", modality="T1", image=Path(""), age=63.0, sex="F",
                volumes={"lateral_ventricles": 32.1, "hippocampus_left": 3.9, "hippocampus_right": 4.0,
                         "thalamus": 15.2, "gm": 620.4, "wm": 480.2, "csf": 250.0, "icv": 1350.6})
    base.update(kw)
    return Subject(**base)


def _train_attributes(rng: np.random.Generator, n: int = 200) -> list[dict]:
    """A cohort around the test subject: IQR of the ventricles ~ 10 mL, of GM ~ 60 mL, of age ~ 20 years."""
    out = []
    for _ in range(n):
        out.append({"modality": "T1", "sex": "F" if rng.random() < 0.5 else "M", "age": float(rng.uniform(40, 80)),
                    "volumes": {"lateral_ventricles": float(rng.normal(30, 7.5)), "hippocampus_left": float(rng.normal(4, .3)),
                                "hippocampus_right": float(rng.normal(4, .3)), "thalamus": float(rng.normal(15, 1)),
                                "gm": float(rng.normal(600, 45)), "wm": float(rng.normal(480, 40)),
                                "csf": float(rng.normal(250, 30)), "icv": float(rng.normal(1350, 90))}})
    return out


def test_tolerance_is_a_quarter_of_the_interquartile_range():
    ages, gm = np.arange(1, 101), np.arange(101, 201)
    train = [{"age": float(a), "volumes": {"gm": float(g)}} for a, g in zip(ages, gm)]
    iqr = np.percentile(ages, 75) - np.percentile(ages, 25)  # 49.5
    assert tolerances(train)["age"] == pytest.approx(0.25 * iqr)
    assert tolerances(train, fraction=0.5)["gm"] == pytest.approx(0.5 * iqr)
    assert tolerances([{"lesions": {"count": 3.0}}] * 5)["lesion_count"] == 1.0  # at least one lesion
    lim = band_limits(train)["gm"]
    assert band(120, lim) == "low" and band(150, lim) == "normal" and band(190, lim) == "high"


def test_a_fluent_report_with_wrong_volumes_has_high_bleu1_and_low_clinical_accuracy():
    """The case text metrics miss: the true caption's words with every volume 40 % too large and the age
    20 years off keeps BLEU-1 high and gets most statements wrong; the right values in other words score
    low BLEU-1 and full clinical accuracy."""
    train = _train_attributes(np.random.default_rng(0))
    truth = _subject()
    wrong = _subject(age=83.0, volumes={k: v * 1.4 for k, v in truth.volumes.items()})
    caption, fluent_wrong = make_caption(truth), make_caption(wrong)
    plain_right = ("Female, 63 years old; T1 weighted scan. Ventricles: 32.1 ml. Left hippocampus: 3.9 ml. "
                   "Right hippocampus: 4.0 ml. Thalamus: 15.2 ml. Grey matter: 620.4 ml. White matter: 480.2 ml. "
                   "CSF: 250.0 ml. Intracranial volume: 1350.6 ml.")
    bleu_wrong, bleu_right = text.bleu([fluent_wrong], [caption], 1), text.bleu([plain_right], [caption], 1)
    assert bleu_wrong > 60 and bleu_right < bleu_wrong - 20  # BLEU-1 ranks the wrong report far above the right one
    tol = tolerances(train)
    truth_attrs = parse_caption(caption)
    acc_wrong = report_scores(statements(parse_caption(fluent_wrong), truth_attrs, tol))
    acc_right = report_scores(statements(parse_caption(plain_right), truth_attrs, tol))
    assert acc_wrong["accuracy"] <= 0.3 and acc_wrong["hallucination"] >= 0.7
    assert acc_right["accuracy"] == 1.0 and acc_right["hallucination"] == 0.0
    lim = band_limits(train)
    assert band_agreement(parse_caption(plain_right), truth_attrs, lim) == 1.0
    assert band_agreement(parse_caption(fluent_wrong), truth_attrs, lim) < 0.5


def test_clinical_results_known_values():
    train = _train_attributes(np.random.default_rng(1))
    truths = [parse_caption(make_caption(_subject(age=50.0 + i))) for i in range(6)]
    same = [dict(t) for t in truths]
    nothing = [{"modality": None, "sex": None, "age": None, "volumes": {}} for _ in truths]
    res = clinical_results(same, truths, nothing, train, n_boot=100, seed=0)
    assert res["accuracy"].value == 1.0 and res["accuracy"].floor == 0.0
    assert res["missing"].value == 0.0 and res["missing"].floor == 1.0
    assert res["modality_accuracy"].value == 1.0 and res["band_agreement"].value == 1.0
    assert res["accuracy"].ci_low <= 1.0 <= res["accuracy"].ci_high


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    yield from registered_cohort(tmp_path_factory, "phantom", n_subjects=N_SUBJECTS, seed=0, workers=2)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory, cohort):
    p = tmp_path_factory.mktemp("suite") / "report-tiny.yaml"
    p.write_text("include: report-quick\nname: report-tiny\n"
                 f"reference: {{name: phantom, args: {{n_subjects: {N_SUBJECTS}, seed: 0}}}}\n"
                 "n_prompts: 20\nmetrics:\n  - {name: report_clinical, args: {n_boot: 200}}\n"
                 "  - {name: report_text, args: {n_boot: 200}}\n")
    return p


@pytest.fixture(scope="module")
def records(suite_file, tmp_path_factory, cohort):
    out = tmp_path_factory.mktemp("runs")
    return {c: json.loads(run(RunConfig(generator=None, captioner=c, suite=suite_file, out=out, quiet=True)).read_text())
            for c in ("measure-and-describe", "nearest-caption", "cohort-prior")}


def test_report_record_has_clinical_and_text_metrics_with_cis(records):
    rec = records["measure-and-describe"]
    assert rec["task"] == "report" and rec["generator"]["kind"] == "captioner" and rec["status"] == "complete"
    for key in ("report_clinical/accuracy", "report_clinical/hallucination", "report_text/bleu1",
                "report_text/bleu4", "report_text/rouge_l", "report_text/chrf", "report_text/embedding_cosine"):
        m = rec["metrics"][key]
        assert m["ci_low"] <= m["value"] <= m["ci_high"] and m["floor"] is not None, key
    assert len(rec["reports"]) == 20
    first = rec["reports"][0]
    assert first["report"] != first["caption"] and parse_caption(first["report"])["modality"] is not None


def test_measure_and_describe_beats_both_baselines_on_clinical_accuracy(records):
    acc = {c: r["metrics"]["report_clinical/accuracy"] for c, r in records.items()}
    md = acc["measure-and-describe"]
    for other in ("nearest-caption", "cohort-prior"):
        assert md["ci_low"] > acc[other]["ci_high"], (other, md, acc[other])
    # cohort-prior says nothing of the volume but its contrast: it sits at the other-subject floor
    assert acc["cohort-prior"]["value"] < md["floor"] + 0.2
    # ... while every report shares most words with the true caption: BLEU-1 barely separates them
    bleu = {c: r["metrics"]["report_text/bleu1"]["value"] for c, r in records.items()}
    assert max(bleu.values()) - min(bleu.values()) < 10


def test_folder_captioner_scores_reports_written_elsewhere(records, suite_file, tmp_path, cohort):
    rec = records["measure-and-describe"]
    path = tmp_path / "reports.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subject_id", "report"])
        for r in rec["reports"]:
            w.writerow([r["subject_id"], r["caption"]])  # the true captions: the ceiling
    out = json.loads(run(RunConfig(generator=None, captioner="folder", captioner_args={"path": str(path)},
                                   suite=suite_file, out=tmp_path / "runs", quiet=True)).read_text())
    assert out["generator"]["display_name"] == "reports"
    assert out["metrics"]["report_clinical/accuracy"]["value"] == 1.0
    assert out["metrics"]["report_text/bleu1"]["value"] == pytest.approx(100.0)
    short = tmp_path / "short.csv"
    short.write_text("subject_id,report\n" + f"{rec['reports'][0]['subject_id']},x\n")
    with pytest.raises(ValueError, match=r"short\.csv: no report for 19 of the suite's 20 volumes"):
        run(RunConfig(generator=None, captioner="folder", captioner_args={"path": str(short)}, suite=suite_file,
                      out=tmp_path / "runs", quiet=True))


def test_prompts_lists_a_report_suites_volumes_with_their_image_files(records, suite_file, cohort):
    out = subprocess.run([sys.executable, "-m", "bench", "--quiet", "prompts", "--suite", str(suite_file), "--limit", "3"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "index,subject_id,image" and len(out) == 4
    ids = [r["subject_id"] for r in records["measure-and-describe"]["reports"][:3]]
    assert [line.split(",")[1] for line in out[1:]] == ids  # the volumes a report run describes, in order
    assert all(Path(line.split(",")[2]).is_file() for line in out[1:])


def test_cli_lists_captioners_and_asks_for_one():
    out = subprocess.run([sys.executable, "-m", "bench", "ls", "captioners"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for name in ("measure-and-describe", "nearest-caption", "cohort-prior", "folder"):
        assert name in out
    with pytest.raises(ValueError, match="give --captioner NAME"):
        RunConfig(generator="template", suite="report-quick").model("report")
    with pytest.raises(ValueError, match="--captioner is for report suites"):
        RunConfig(generator=None, captioner="cohort-prior", suite="quick").model("text-to-volume")


# ------------------------------------------------------------------------------- round trip
@pytest.fixture(scope="module")
def roundtrip_records(tmp_path_factory, cohort):
    suite = tmp_path_factory.mktemp("suite") / "rt-tiny.yaml"
    suite.write_text("include: quick\nname: rt-tiny\n"
                     f"reference: {{name: phantom, args: {{n_subjects: {N_SUBJECTS}, seed: 0}}}}\n"
                     "n_prompts: 20\nmetrics:\n  - {name: roundtrip, args: {n_boot: 200}}\n"
                     "headline:\n  conformance: [roundtrip/accuracy]\n")
    out = tmp_path_factory.mktemp("runs")
    return {g: json.loads(run(RunConfig(generator=g, suite=suite, out=out, quiet=True)).read_text())
            for g in ("ldm3d", "ldm3d-uncond")}


def test_roundtrip_is_in_ldm3d_records_and_separates_it_from_the_unconditional_model(roundtrip_records):
    rt = {g: r["metrics"] for g, r in roundtrip_records.items()}
    cond, uncond = rt["ldm3d"], rt["ldm3d-uncond"]
    assert cond["roundtrip/accuracy"]["value"] > uncond["roundtrip/accuracy"]["value"] + 0.1
    assert cond["roundtrip/modality_accuracy"]["value"] >= 0.9 > uncond["roundtrip/modality_accuracy"]["value"]
    # the floor: the same round trip through each prompt's real volume (what a perfect generator reaches)
    assert cond["roundtrip/accuracy"]["floor"] >= max(0.6, cond["roundtrip/accuracy"]["value"])  # 0.72 on this cohort
    assert cond["roundtrip/accuracy"]["details"]["captioner"] == "measure-and-describe"
    assert len(cond["roundtrip/accuracy"]["details"]["reports"]) == 20


# ------------------------------------------------------------------------------- report card
def test_report_card_clinical_accuracy_sees_wrong_numbers_and_ignores_wording_bleu_the_reverse(suite_file, tmp_path,
                                                                                               cohort):
    from bench.validate import ValidateConfig, validate

    card = json.loads(validate(ValidateConfig(suite=suite_file, out=tmp_path, corruptions=("values", "wording"),
                                              quiet=True)).read_text())
    assert card["detected_against"] == "ceiling" and card["corruptions"]["values"]["levels"] == [0.1, 0.2, 0.4]
    acc, bleu = card["metrics"]["report_clinical/accuracy"], card["metrics"]["report_text/bleu1"]
    assert acc["values"]["detected_at"] == 1 and acc["values"]["monotone"]
    assert acc["wording"]["detected_at"] is None and acc["wording"]["values"] == [1.0, 1.0, 1.0]
    assert bleu["wording"]["detected_at"] == 1 and bleu["wording"]["values"][2] < 40
    # every number 40 % off keeps BLEU-1 above 80 (the words are the true caption's), accuracy below 0.3
    assert bleu["values"]["values"][2] > 80 and acc["values"]["values"][2] < 0.3

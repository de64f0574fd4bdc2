"""The ``follow-up`` task end to end on ``phantom-ms-long``: the plan, the two baselines, the follow-up
metrics' known responses (a copy changes nothing, real follow-ups score their own floor)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench.followup import followup_plan
from bench.runner import RunConfig, run
from cohorts.atlas import atlas_on_grid
from cohorts.captions import parse_caption
from cohorts.subject import Cohort
from metrics.base import EvalSets
from metrics.followup import FollowUp
from tests._helpers import registered_cohort

N_SUBJECTS = 16  # 4 test sequences of 3 sessions


@pytest.fixture(scope="module")
def long(tmp_path_factory) -> Cohort:
    yield from registered_cohort(tmp_path_factory, "phantom-ms-long", n_subjects=N_SUBJECTS, seed=0, workers=2)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory, long):
    p = tmp_path_factory.mktemp("suite") / "long-tiny.yaml"
    p.write_text("include: longitudinal-quick\nname: long-tiny\n"
                 f"reference: {{name: phantom-ms-long, args: {{n_subjects: {N_SUBJECTS}, seed: 0}}}}\n"
                 "n_prompts: 4\nmetrics:\n  - {name: followup, args: {n_boot: 200}}\n"
                 "  - {name: lesion_conformance, args: {n_boot: 200}}\n  - {name: ssim}\n"
                 "headline:\n  conformance: [followup/identity]\n")
    return p


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def records(suite_file, runs_dir, long):
    return {g: json.loads(run(RunConfig(generator=g, suite=suite_file, out=runs_dir, quiet=True)).read_text())
            for g in ("copy-baseline", "lesion-paint")}


def test_plan_is_step_major_with_real_previous_and_matched_floor(long):
    plan = followup_plan(long, 3, seed=0)
    assert plan.n_steps == 2 and plan.steps == [1, 1, 1, 2, 2, 2]
    assert plan.sequences[:3] == plan.sequences[3:]
    for i, (ref, prev, floor) in enumerate(zip(plan.prompts.reference, plan.previous_real, plan.prompts.floor)):
        assert ref.sequence == prev.sequence == plan.sequences[i]
        assert ref.session == f"ses-{plan.steps[i]:02d}" and prev.session == f"ses-{plan.steps[i] - 1:02d}"
        assert floor.sequence != ref.sequence and floor.modality == ref.modality and floor.split == "train"
        assert plan.prompts.prompts[i].attributes["changes"]["months"] > 0
    assert [b.session for b in plan.baselines] == ["ses-00"] * 3
    assert followup_plan(long, 3, seed=0).to_json() == plan.to_json()  # seeded


def test_copy_baseline_has_perfect_identity_and_zero_change(records):
    m = records["copy-baseline"]["metrics"]
    assert records["copy-baseline"]["task"] == "follow-up" and records["copy-baseline"]["status"] == "complete"
    assert m["followup/identity"]["value"] == 1.0 and m["followup/sequence_identity"]["value"] == 1.0
    assert m["followup/lesion_persistence"]["value"] == 1.0
    for k in ("thalamus_change_r", "caudate_change_r", "brain_change_r"):
        assert m[f"followup/{k}"]["value"] == 0.0, k
    assert m["followup/thalamus_change_mae"]["value"] > 0  # the requests are not zero
    # real follow-ups are not copies: their identity (the floor) is below 1
    assert m["followup/identity"]["floor"] < 1.0


def test_lesion_paint_changes_what_the_prompt_asks(records):
    copy, paint = records["copy-baseline"]["metrics"], records["lesion-paint"]["metrics"]
    for k in ("new_lesions", "lesion_volume_change", "thalamus_change", "caudate_change"):
        assert paint[f"followup/{k}_r"]["value"] > 0.5, k
        assert paint[f"followup/{k}_mae"]["value"] < copy[f"followup/{k}_mae"]["value"], k
    assert paint["followup/cumulative_new_lesions_r"]["value"] > 0.5
    assert 0.5 < paint["followup/identity"]["value"] < 1.0
    # the same real floor whatever the generator
    assert paint["followup/identity"]["floor"] == copy["followup/identity"]["floor"]


def test_run_folder_layout_and_resume(records, suite_file, runs_dir):
    rec = records["lesion-paint"]
    assert len(rec["prompts"]) == 8 and rec["suite"]["n_prompts"] == 8
    run_dir = runs_dir / rec["run_id"]
    for step in (1, 2):
        assert (run_dir / "samples" / f"step-{step}" / "shard_0000.npz").exists()
    listed = json.loads((run_dir / "prompts.json").read_text())
    assert [p["step"] for p in listed] == [1] * 4 + [2] * 4 and all("previous_subject_id" in p for p in listed)
    (run_dir / "record.json").unlink()
    (run_dir / "samples" / "step-2" / "shard_0000.npz").unlink()  # a run killed during step 2
    shutil.rmtree(run_dir / "metrics")
    again = json.loads(run(RunConfig(generator="lesion-paint", suite=suite_file, out=runs_dir, quiet=True)).read_text())
    assert again["run_id"] == rec["run_id"]
    assert again["metrics"]["followup/identity"]["value"] == rec["metrics"]["followup/identity"]["value"]


def test_followup_of_real_sequences_scores_its_floor(long):
    plan = followup_plan(long, 4, seed=0)
    load = lambda subjects: np.stack([long.load_volume(s) for s in subjects])[:, None]  # noqa: E731
    ref, prev = load(plan.prompts.reference), load(plan.previous_real)
    sets = EvalSets(generated=ref, reference=ref, floor=load(plan.prompts.floor), brain_mask=long.brain_mask(),
                    features=None, attributes=[parse_caption(s.caption) for s in plan.prompts.reference],
                    atlas=atlas_on_grid(long.grid), previous=prev, reference_previous=prev, items=plan.items())
    out = FollowUp(n_boot=200).compute(sets, seed=0)
    assert {"identity", "new_lesions_r", "thalamus_change_r", "lesion_persistence", "sequence_identity"} <= set(out)
    for k, r in out.items():
        assert r.value == pytest.approx(r.floor, nan_ok=True), k
    # the phantom's stated deep grey-matter changes are measurable on the real follow-ups
    assert out["thalamus_change_r"].value > 0.3


def test_a_text_to_volume_generator_cannot_run_a_follow_up_suite(suite_file, tmp_path):
    with pytest.raises(ValueError, match=r"no follow_up\(\) method.*copy-baseline.*lesion-paint"):
        run(RunConfig(generator="template", suite=suite_file, out=tmp_path, quiet=True))
    with pytest.raises(ValueError, match=r"copy-baseline.*no generate\(\) method"):
        run(RunConfig(generator="copy-baseline", suite="quick", out=tmp_path, quiet=True))


def test_prompts_of_a_follow_up_suite_cannot_be_exported(capsys):
    from bench.cli import main

    assert main(["prompts", "--suite", "longitudinal-quick"]) == 2
    assert "follow-up suite" in capsys.readouterr().err

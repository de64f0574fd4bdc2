"""Shared benchmark set-up."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def bench_home(tmp_path_factory):
    """A home of its own (empty feature cache) with the quick/full suites' phantom cohort linked in;
    the cohort is built once, in the user's real home."""
    from cohorts.phantom import PhantomCohort

    cohort = PhantomCohort.get("3mm", n_subjects=400, seed=0, quiet=True)
    h = tmp_path_factory.mktemp("bench-home")
    (h / "cohorts").mkdir()
    os.symlink(cohort.root, h / "cohorts" / cohort.root.name)
    old = os.environ.get("BRAINGENBENCH_HOME")
    os.environ["BRAINGENBENCH_HOME"] = str(h)
    yield h
    if old is None:
        del os.environ["BRAINGENBENCH_HOME"]
    else:
        os.environ["BRAINGENBENCH_HOME"] = old

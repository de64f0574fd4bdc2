"""Shared set-up of the tiny latent-diffusion tests (tests/test_ldm3d.py, tests/test_baselines.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np

from cohorts.grid import Grid
from cohorts.subject import STRUCTURES, Cohort, Subject, save_nifti

TINY = Grid("tiny", 6.0, (16, 16, 24))  # latent 4 x 4 x 6 -> padded to 4 x 4 x 8 for the UNet

PROMPT = "Synthetic phantom. T1-weighted brain MRI of a 63-year-old woman. Lateral ventricles 32.1 mL (78th percentile)."
OTHER = "Synthetic phantom. FLAIR brain MRI of a 30-year-old man. Lateral ventricles 12.0 mL (20th percentile)."

TINY_NETWORKS = {
    "autoencoder": {"channels": [4, 8, 8], "num_res_blocks": 1, "latent_channels": 2, "norm_num_groups": 4},
    "unet": {"channels": [8, 16, 16], "attention_levels": [False, True, True], "num_res_blocks": 1,
             "num_head_channels": 8, "norm_num_groups": 8},
    "conditioning": {"max_tokens": 48, "context_dim": 16},
}


def tiny_config(name: str, *, ae_steps: int, ae_batch: int, diff_steps: int, diff_batch: int, **top) -> dict:
    """A config dict of the tiny networks (ldm3d or slice2d) that checkpoints after every step.

    Args:
        name: the config's ``name``.
        ae_steps, ae_batch: autoencoder steps and batch size.
        diff_steps, diff_batch: diffusion steps and batch size.
        top: more top-level keys (e.g. ``slice_axis``).
    """
    return {"name": name, "grid": "tiny", **top, **copy.deepcopy(TINY_NETWORKS),
            "training": {"checkpoint_minutes": 0.0,
                         "autoencoder": {"steps": ae_steps, "batch_size": ae_batch, "max_minutes": 0},
                         "diffusion": {"steps": diff_steps, "batch_size": diff_batch, "max_minutes": 0}}}


def tiny_cohort(root: Path, n: int = 6, *, detailed: bool = True) -> Cohort:
    """A saved cohort of ``n`` random-noise subjects on :data:`TINY` (the first 4 train, the rest test).

    Args:
        root: the cohort folder.
        n: number of subjects.
        detailed: captions also name the ventricles' percentile and the grey-matter volume.
    """
    rng = np.random.default_rng(0)
    mask = np.zeros(TINY.shape, np.float32)
    mask[2:-2, 2:-2, 3:-3] = 1
    save_nifti(root / "brain_mask.nii.gz", mask, TINY)
    subjects = []
    for i in range(n):
        img = root / "images" / f"s{i}.nii.gz"
        save_nifti(img, (rng.random(TINY.shape) * mask).astype(np.float32), TINY)
        mod, sex, age = ("T1", "T2", "PD", "FLAIR")[i % 4], "FM"[i % 2], float(20 + 10 * i)
        vols = {k: float(rng.uniform(1, 50)) for k in STRUCTURES}
        cap = (f"Synthetic phantom. {mod}-weighted brain MRI of a {age:.0f}-year-old "
               f"{'woman' if sex == 'F' else 'man'}. Lateral ventricles {vols['lateral_ventricles']:.1f} mL")
        cap += f" ({10 * i + 5}th percentile); grey matter {vols['gm']:.1f} mL." if detailed else "."
        subjects.append(Subject(f"s{i}", "train" if i < 4 else "test", mod, img, age=age, sex=sex, volumes=vols,
                                caption=cap, synthetic=True))
    cohort = Cohort("tiny", root, TINY, subjects, {"synthetic": True})
    cohort.save()
    return cohort


def registered_cohort(tmp_path_factory, name: str, grid: str = "3mm", **build):
    """Generator for a module fixture: the registered cohort ``name`` built (once per test session) in
    the session's ``bgb_home``, with ``BRAINGENBENCH_HOME`` pointing there while the module runs."""
    import pytest

    from cohorts.registry import cohorts

    home = tmp_path_factory.getbasetemp() / "bgb_home"
    mp = pytest.MonkeyPatch()
    mp.setenv("BRAINGENBENCH_HOME", str(home))
    try:
        yield cohorts.get(name).get(grid, home=home, quiet=True, **build)
    finally:
        mp.undo()


#: where chromedriver and Chromium are (None when absent: the browser tests skip, naming `make browser`)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and Path(p).exists()), None)
BROWSER_MISSING = ("chromium / chromedriver not found; install them with `make browser` "
                   "(apt-get install chromium chromium-driver)")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


def chromium_driver(window: str = "1280,1600"):
    """Generator for a module fixture: a headless Chromium driver with its own profile and browser logs."""
    import tempfile

    import pytest

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    if CHROMEDRIVER is None or CHROMIUM is None:
        pytest.skip(BROWSER_MISSING)
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="bgb-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (f"--window-size={window}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def severe_browser_logs(drv) -> list[str]:
    """The SEVERE entries of the browser console (JavaScript errors, failed loads)."""
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]

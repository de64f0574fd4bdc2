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

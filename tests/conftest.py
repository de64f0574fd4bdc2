"""Shared test set-up: every test session gets its own $BRAINGENBENCH_HOME (no pollution of the
user's cache, no stale cache entries between sessions)."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="bgb-test-home-")
os.environ.setdefault("BRAINGENBENCH_HOME", _HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

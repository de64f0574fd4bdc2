"""bench.memory: the heap policies that keep a run's resident set bounded."""

import os
import subprocess
import sys
import textwrap

import pytest

from bench import memory

LINUX_GLIBC = sys.platform.startswith("linux") and memory._libc() is not None


@pytest.mark.skipif(not LINUX_GLIBC, reason="glibc only")
def test_policy_is_accepted_here_and_inherited_by_child_processes():
    code = textwrap.dedent("""
        import os, subprocess, sys
        from bench import memory
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
        print(memory.bound_heap_growth())
        print(subprocess.run([sys.executable, "-c", "import os; print(os.environ['MALLOC_MMAP_THRESHOLD_'])"],
                             capture_output=True, text=True, check=True).stdout.strip())
        memory.release_free_memory()
    """)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
    assert out == ["True", str(memory.MMAP_THRESHOLD)]


@pytest.mark.skipif(not LINUX_GLIBC, reason="glibc only")
def test_freed_volume_sized_arrays_are_returned_to_the_os():
    """The mechanism itself: after a big block is freed, glibc (by default) keeps later volume-sized
    arrays on its heap; with the policy, freeing them gives the memory back."""
    code = textwrap.dedent("""
        import sys, numpy as np, psutil
        from bench import memory
        memory.apply_heap_policy(sys.argv[1]) if sys.argv[1] != "default" else None
        p = psutil.Process()
        big = np.ones(8 << 20, np.uint8); del big          # raises glibc's dynamic threshold to 8 MiB
        base = p.memory_info().rss
        keep = []
        for i in range(64):                                 # 64 x 2 MiB arrays, a small survivor after each
            a = np.ones(2 << 20, np.uint8)
            keep.append(np.ones(16, np.uint8))
            a_list = [a]; del a
            a_list.clear()
        blocks = [np.ones(2 << 20, np.uint8) for _ in range(64)]  # 128 MiB alive at once ...
        for b in blocks:
            keep.append(np.ones(16, np.uint8))
        del blocks                                          # ... then freed
        if sys.argv[1] == "trim":
            memory.release_free_memory()                    # what the executor does after every task
        print((p.memory_info().rss - base) / 2**20)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    held = {mode: float(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       env=env, check=True, cwd=root).stdout)
            for mode in ("default", "bounded", "trim")}
    assert held["bounded"] < 16, held
    assert held["trim"] < 16, held  # glibc's malloc_trim returns free pages from inside the heap too
    assert held["default"] > 64, held  # the creep the policy prevents (glibc's documented behaviour)


def test_unknown_heap_policy_is_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'trim'"):
        memory.check_heap_policy("trimm")


def test_run_config_checks_the_heap_policy_before_any_work():
    from bench.runner import RunConfig

    RunConfig(generator="template", suite="quick", heap="trim").check()
    with pytest.raises(ValueError, match="unknown heap policy 'bounde'.*did you mean 'bounded'"):
        RunConfig(generator="template", suite="quick", heap="bounde").check()

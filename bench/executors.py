"""Where the runner's tasks run: in this process, or on a Ray cluster.

The runner splits a run into tasks of one shard each — generating a shard of prompts, extracting
one extractor's features of a shard of volumes, a per-volume metric function over a shard — and
hands lists of them to an :class:`Executor`, which returns their results in task order. Tasks read
and write through the run folder and the content-addressed caches, so what a task returns is small
(paths, feature rows, per-volume numbers) and a task that already finished is never run again.

Results do not depend on the executor: the shard partition is fixed by the runner (not by the
number of workers), every task is a deterministic function of its inputs, and results are merged
in task order. A run started with one executor can be resumed with the other.

Executors:
    ``local`` — every task in this process, in order (the default; on one machine torch already
    uses all cores inside a task, so process-level parallelism would only add copies of the models).
    ``ray`` — tasks as Ray remote functions (``ray.init(address=...)``; without an address a local
    cluster is started). A task that raises, or whose worker dies, is retried ``max_retries`` times;
    tasks that use torch ask for one GPU when the cluster has GPUs. An :class:`core.errors.InputError`
    (a bad sample file, say) is deterministic and never retried. Workers must see the same
    files as the driver: the repository, ``$BRAINGENBENCH_HOME`` (cohorts, caches) and the runs
    folder, i.e. a shared filesystem on a multi-node cluster.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from bench.memory import release_free_memory
from core.progress import Progress
from core.errors import InputError

log = logging.getLogger("braingenbench.executors")


class TaskFailed(RuntimeError):
    """A task still failed after its retries."""


class Executor:
    """Runs ``fn(item)`` for every item and returns the results in item order.

    Args:
        max_retries: extra attempts for a task that raises (and, on Ray, whose worker dies).
    """

    name = "executor"

    def __init__(self, *, max_retries: int = 2, quiet: bool = False):
        self.quiet = bool(quiet)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = int(max_retries)
        self.stats: dict[str, float] = {"tasks": 0, "retries": 0, "seconds": 0.0}
        #: what tasks built in this process (a generator, an extractor pool), keyed by their spec;
        #: released by :meth:`close`, so a process that runs twice does not keep the first run's models
        self.store: dict[str, Any] = {}

    def map(self, fn: Callable[[Any], Any], items: Sequence, *, desc: str = "tasks", gpu: bool = False,
            quiet: bool = False) -> list:
        """``[fn(item) for item in items]``, possibly elsewhere.

        Args:
            fn: a picklable callable of one argument.
            items: the task inputs (picklable).
            desc: what the tasks are (logs, progress).
            gpu: the tasks use torch and would use a GPU if the worker has one.
            quiet: no progress for this map (the executor's own ``quiet`` applies anyway).
        """
        raise NotImplementedError

    def shard_mapper(self, *, desc: str = "per-volume", gpu: bool = False,
                     quiet: bool = False) -> Callable[[Callable, list], list]:
        """A :data:`metrics.base.ShardMapper` running each shard as one task (``quiet``: no progress of
        its own, e.g. inside a metric whose progress the metrics stage shows)."""
        from metrics.volumes import check_aligned

        def mapper(fn: Callable, sets: list) -> list:
            n = check_aligned(sets)
            return self.map(_ShardCall(fn, sets), list(range(n)), desc=desc, gpu=gpu, quiet=quiet)

        return mapper

    def close(self) -> None:
        """Release what tasks built and the workers."""
        self.store.clear()

    def info(self) -> dict:
        return {"name": self.name, "max_retries": self.max_retries}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ShardCall:
    """``apply_to_shard(fn, sets, k)`` as a picklable callable of ``k``."""

    def __init__(self, fn: Callable, sets: list):
        self.fn, self.sets = fn, sets

    def __call__(self, k: int):
        from metrics.volumes import apply_to_shard

        return apply_to_shard(self.fn, self.sets, k)


class LocalExecutor(Executor):
    """Every task in this process, in order; a task that raises is retried ``max_retries`` times."""

    name = "local"

    def map(self, fn, items, *, desc="tasks", gpu=False, quiet=False):
        with Progress(desc, len(items), quiet=self.quiet or quiet) as progress:
            return [self._run(fn, item, desc, progress) for item in items]

    def _run(self, fn, item, desc: str, progress: Progress):
        t0 = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            try:
                out = with_store(fn, self.store)(item)
                release_free_memory()  # what the task freed goes back to the OS (bench.memory)
                break
            except (KeyboardInterrupt, SystemExit, MemoryError, InputError):
                raise  # an InputError is deterministic: a retry would fail the same way
            except Exception as e:  # noqa: BLE001 - retried, then re-raised with context
                if attempt == self.max_retries:
                    raise TaskFailed(f"{desc} task {item!r} failed after {attempt + 1} attempts: "
                                     f"{type(e).__name__}: {e}") from e
                self.stats["retries"] += 1
                log.warning("%s task %r failed (%s: %s); retry %d/%d", desc, item, type(e).__name__, e,
                            attempt + 1, self.max_retries)
        self.stats["tasks"] += 1
        self.stats["seconds"] += time.perf_counter() - t0
        progress.update()
        return out


def with_store(fn: Callable, store: dict) -> Callable:
    """``fn`` bound to a store of built objects when it takes one (tasks with a ``bind_store`` method)."""
    bind = getattr(fn, "bind_store", None)
    return bind(store) if bind is not None else fn


class _RemoteInputError:
    """An :class:`InputError` raised on a Ray worker, returned (not raised) so Ray does not retry it."""

    def __init__(self, message: str):
        self.message = message


def _ray_call(fn, item):
    # a Ray worker process keeps what its tasks built for its own lifetime (the cluster's, not the run's)
    store = _ray_call.__dict__.setdefault("store", {})
    try:
        out = with_store(fn, store)(item)
        release_free_memory()
        return out
    except InputError as e:
        return _RemoteInputError(str(e))


class RayExecutor(Executor):
    """Tasks as Ray remote functions.

    Args:
        address: a running cluster (``ray://host:10001`` or ``host:6379``; ``auto`` finds the local
            one). None starts a private local cluster for this run.
        num_cpus: CPUs of a private local cluster (None: all).
        cpus_per_task: CPUs each task reserves (torch inside a task uses this many threads).
        max_retries: retries of a task that raises or whose worker dies.
        env: environment variables of the workers (the runner passes ``BRAINGENBENCH_HOME`` and the
            repository on ``PYTHONPATH``).
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None, cpus_per_task: float = 1.0,
                 max_retries: int = 2, env: dict[str, str] | None = None, quiet: bool = False):
        super().__init__(max_retries=max_retries, quiet=quiet)
        try:
            import ray
        except ImportError as e:  # pragma: no cover - ray is a dependency of `make install`
            raise ImportError("--executor ray needs the `ray` package: pip install 'ray==2.60.0' "
                              "(`make install` does this)") from e
        self.ray, self.address, self.cpus_per_task = ray, address, float(cpus_per_task)
        self._owns = not ray.is_initialized()
        if self._owns:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False, "runtime_env": {"env_vars": dict(env or {})}}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = num_cpus
            ray.init(**kw)
        self._remote = ray.remote(_ray_call)
        self.has_gpu = float(ray.cluster_resources().get("GPU", 0)) > 0

    def map(self, fn, items, *, desc="tasks", gpu=False, quiet=False):
        if not items:
            return []
        t0 = time.perf_counter()
        opts = {"max_retries": self.max_retries, "retry_exceptions": True, "num_cpus": self.cpus_per_task,
                "num_gpus": 1 if (gpu and self.has_gpu) else 0}
        fn_ref = self.ray.put(fn)  # shipped once, not once per task
        refs = [self._remote.options(**opts).remote(fn_ref, item) for item in items]
        try:
            out = self.ray.get(refs)
        except self.ray.exceptions.RayError as e:
            raise TaskFailed(f"{desc}: a task failed after {self.max_retries} retries: {e}") from e
        for r in out:
            if isinstance(r, _RemoteInputError):
                raise InputError(r.message)
        self.stats["tasks"] += len(items)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def info(self) -> dict:
        return {**super().info(), "address": self.address, "cpus_per_task": self.cpus_per_task,
                "cluster_resources": {k: v for k, v in self.ray.cluster_resources().items()
                                      if k in ("CPU", "GPU", "memory")}}

    def close(self) -> None:
        super().close()
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, *, ray_address: str | None = None, max_retries: int = 2,
                  quiet: bool = False) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``)."""
    from core.names import did_you_mean

    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}{did_you_mean(name, EXECUTORS, 1)} "
                         f"(available: {', '.join(EXECUTORS)})")
    if name == "local":
        if ray_address:
            raise ValueError("--ray-address is only used with --executor ray")
        return LocalExecutor(max_retries=max_retries, quiet=quiet)
    import os
    from pathlib import Path

    from core.io import home

    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return RayExecutor(address=ray_address, max_retries=max_retries, quiet=quiet,
                       env={"BRAINGENBENCH_HOME": str(home()), "PYTHONPATH": path})

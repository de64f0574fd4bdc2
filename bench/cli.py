"""``python -m bench``: run suites, list registries, build cohorts, build leaderboards.

Exit codes: 0 success, 1 a requested check failed (e.g. a regression), 2 bad input (unknown names,
bad arguments, unreadable files) with a message that says what to do.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import reader_study
from bench.memory import DEFAULT_HEAP, HEAP_POLICIES

log = logging.getLogger("braingenbench")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a suite against a generator (or a captioner) and write a record",
                       description="Generate from the suite's prompts (or, for a report suite, describe its "
                                   "volumes), compute its metrics and write DIR/<run_id>/record.json. Re-running "
                                   "the same command resumes the run.")
    p.add_argument("--generator", default=None, help="generator name (see `ls generators`)")
    p.add_argument("--captioner", default=None, help="captioner name, for report suites (see `ls captioners`)")
    p.add_argument("--captioner-args", default="", metavar="K=V,...", help="constructor arguments of the captioner")
    p.add_argument("--suite", required=True, help="suite name (see `ls suites`) or a suite YAML path")
    p.add_argument("--generator-args", default="", metavar="K=V,...", help="constructor arguments of the generator")
    p.add_argument("--extractor-args", default="", metavar="K=V,...",
                   help="arguments of the feature extractors, e.g. weights=PATH for medicalnet-*")
    p.add_argument("--reference", default=None,
                   help="reference cohort: a registered name or a prepared cohort folder (default: the suite's)")
    p.add_argument("--out", default="runs", type=Path, help="runs folder (default: runs/)")
    p.add_argument("--seed", type=int, default=None, help="override the suite's seed")
    p.add_argument("--limit", type=int, default=None, help="use at most N prompts (quick checks)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where tasks run: this process (default) or a Ray cluster (see README, scaling out)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (e.g. auto, host:6379, ray://host:10001); default: a private local cluster")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse what an earlier identical run finished (default) or start over")
    p.add_argument("--heap", default=DEFAULT_HEAP, choices=list(HEAP_POLICIES),
                   help="memory policy: 'trim' (default) keeps glibc's mmap threshold and trims the heap after "
                        "every task; 'bounded' fixes the threshold at 1 MiB (lowest peak, slower torch) "
                        "(docs/scaling.md)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a metric failed (the record is still written, with status 'partial')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)

    p = sub.add_parser("validate", help="the metric report card: what each metric of a suite detects",
                       description="Score a seeded ladder of corruptions (noise, Rician noise, blur, k-space "
                                   "low-pass, bias field, intensity shift and scale, ghosting, thick slices, "
                                   "deformation, contrast swap, training copies; 3 levels each) of the suite's "
                                   "held-out real volumes through the runner, and write DIR/validation.json: per "
                                   "metric and corruption the values, CIs, monotonicity and the first level "
                                   "detected against the real-vs-real floor. For a report suite the ladder is "
                                   "the true captions with wrong numbers, other wording or statements left out, "
                                   "detected against the uncorrupted caption's value.")
    p.add_argument("--suite", required=True, help="suite name (see `ls suites`) or a suite YAML path")
    p.add_argument("--reference", default=None, help="reference cohort (default: the suite's)")
    p.add_argument("--out", type=Path, default=Path("validation"), help="report folder (default: validation/)")
    p.add_argument("--corruptions", default=None, metavar="KIND,...", help="a subset of the ladder (default: all)")
    p.add_argument("--seed", type=int, default=None, help="override the suite's seed")
    p.add_argument("--limit", type=int, default=None, help="use at most N prompts")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse finished runs (default) or start over")

    p = sub.add_parser("ls", help="list registered generators, metrics, extractors, cohorts or suites")
    p.add_argument("what", choices=["generators", "captioners", "metrics", "extractors", "cohorts", "suites",
                                     "protocols"])

    p = sub.add_parser("leaderboard", help="build the static leaderboard site from run records")
    p.add_argument("runs_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("site"))
    p.add_argument("--validation", type=Path, default=None,
                   help="a validation.json (or its folder) from `bench validate`: adds the report-card page and "
                        "shows what each headline metric misses (default: RUNS_DIR/validation.json if present)")

    p = sub.add_parser("compare", help="compare two run records (base vs head checkpoint) for a pull request",
                       description="Per metric present in both records: base, head, delta, the 95% CI of the "
                                   "difference (paired bootstrap over prompts when both runs used the same "
                                   "prompts, else from the recorded CIs), a two-sided p-value, Holm-Bonferroni "
                                   "across the metrics (family-wise alpha 0.05), a tolerance per metric (the "
                                   "suite's, else the half-width of the real-vs-real floor interval) and a "
                                   "better / worse / no significant change verdict, plus one line per axis. "
                                   "Runs that differ in suite, N, reference or grid are refused (exit 2) unless "
                                   "--force. Markdown on stdout (or --out).")
    p.add_argument("base", type=Path, help="base run folder or its record.json")
    p.add_argument("head", type=Path, help="head run folder or its record.json")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 when any metric is significantly worse in head")
    p.add_argument("--force", action="store_true",
                   help="compare even when suite, N, reference cohort or grid differ (the report names them)")
    p.add_argument("--format", choices=["markdown", "json"], default="markdown", help="report format")
    p.add_argument("--out", type=Path, default=None, help="write the report to FILE (default: stdout)")

    p = sub.add_parser("cohort", help="build or prepare reference cohorts")
    csub = p.add_subparsers(dest="cohort_command", required=True)
    b = csub.add_parser("build", help="build a synthetic cohort (phantom)")
    b.add_argument("name", help="cohort name, e.g. phantom")
    b.add_argument("--out", type=Path, default=None, help="folder (default: cached under $BRAINGENBENCH_HOME)")
    b.add_argument("--grid", default="3mm", choices=["3mm", "2mm", "1mm"])
    b.add_argument("--n-subjects", type=int, default=400)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=2)
    pr = csub.add_parser("prepare", help="prepare a real dataset (ixi, oasis1, ibsr, kirby21, bids) from its download",
                         description="Read a public dataset as its download unpacks, bring every scan into atlas "
                                     "space (RAS+, N4, brain extraction, affine + demons registration to ICBM152, "
                                     "atlas-label volumes in native space, QC) and write a cohort folder usable as "
                                     "--reference DIR. Resumable; failures go to DIR/failed.csv.")
    pr.add_argument("name", help="dataset: ixi, oasis1, ibsr, kirby21 or bids")
    pr.add_argument("raw_dir", type=Path, help="the folder the download unpacks to")
    pr.add_argument("--out", type=Path, default=None,
                    help="cohort folder (default: $BRAINGENBENCH_HOME/cohorts/<name>-<grid>, found by --reference <name>)")
    pr.add_argument("--grid", default="3mm", choices=["3mm", "2mm", "1mm"])
    pr.add_argument("--workers", type=int, default=1, help="processes, one session each (default 1)")
    pr.add_argument("--skull-strip", default="deepbet", choices=["deepbet", "threshold", "none"],
                    help="brain extraction: deepbet (T1w network; T2/PD/FLAIR reuse the T1 mask), threshold, none")
    pr.add_argument("--deformable", default="demons", choices=["demons", "bspline", "none"],
                    help="deformable registration stage after the affine (default demons)")
    pr.add_argument("--modalities", default=None, help="comma-separated subset, e.g. T1,T2 (default: all)")
    pr.add_argument("--limit", type=int, default=None, help="only the first N sessions")
    pr.add_argument("--keep-qc-failures", action="store_true",
                    help="keep scans that fail registration QC in their split (default: split 'excluded')")

    p = sub.add_parser("explain", help="what a prompt does: cross-attention maps per token, or a counterfactual edit",
                       description="Without --edit: sample one volume for the prompt (--prompt, or the caption of "
                                   "--subject / --index) and write per-token cross-attention maps on one colour "
                                   "scale, a ranked contact sheet and index.json. With --edit (ventricles*1.5, "
                                   "age+30, modality=T2, lesions+5): generate the subject's caption and the edited "
                                   "caption with the same seeds (--n pairs) and write the mean difference map and "
                                   "the measured change with its bootstrap CI.")
    p.add_argument("--generator", default="ldm3d")
    p.add_argument("--prompt", default=None, help="caption for the attention maps (default: the subject's)")
    p.add_argument("--subject", default=None, help="subject id of the suite's reference cohort (base prompt)")
    p.add_argument("--index", type=int, default=None, help="K-th of the suite's prompts (default 0)")
    p.add_argument("--edit", default=None, help="counterfactual edit, e.g. ventricles*1.5, age+30, modality=T2")
    p.add_argument("--n", type=int, default=16, help="same-seed pairs of a counterfactual (default 16)")
    p.add_argument("--run", type=Path, default=None, help="run folder: write into RUN/explain/ for its run page")
    p.add_argument("--out", type=Path, default=None, help="output folder (when no --run)")
    p.add_argument("--generator-args", default="", metavar="K=V,...")
    p.add_argument("--suite", default="quick", help="suite whose reference cohort, grid and prompts to use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("prompts", help="export a suite's prompts as CSV (for the folder adapter); for a report "
                                       "suite, the volumes to describe (subject_id, image)")
    p.add_argument("--suite", required=True)
    p.add_argument("--reference", default=None,
                   help="reference cohort: a registered name or a prepared cohort folder (default: the suite's)")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default: stdout)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")

    reader_study.add_parser(sub)
    _accept_anywhere(sub, "--quiet", "--verbose")
    args = parser.parse_args(argv)
    from bench.console import setup_logging

    setup_logging(quiet=args.quiet, verbose=args.verbose)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        from bench.args import ArgumentError
        from cohorts.subject import CohortError
        from bench.records import RecordError
        from bench.registry import UnknownNameError
        from bench.suite import SuiteError

        if isinstance(e, (UnknownNameError, ArgumentError, SuiteError, CohortError, RecordError,
                          FileNotFoundError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


def _accept_anywhere(sub, *flags: str) -> None:
    """Let the global flags also follow a command (``python -m bench run ... --quiet``)."""
    for choice in sub.choices.values():
        for flag in flags:
            choice.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for action in choice._subparsers._group_actions if choice._subparsers else []:
            _accept_anywhere(action, *flags)


def _dispatch(args) -> int:
    if args.command == "reader-study":
        return reader_study.main(args)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "ls":
        return _cmd_ls(args.what)
    if args.command == "validate":
        return _cmd_validate(args)
    if args.command == "leaderboard":
        from leaderboards import build_site

        validation = None
        vpath = args.validation or (args.runs_dir / "validation.json")
        if args.validation is not None or vpath.exists():
            from bench.validate import load_report

            validation = load_report(vpath)
        paths = build_site(args.runs_dir, args.out, validation=validation)
        for k, v in paths.items():
            print(f"{k}: {v}")
        return 0
    if args.command == "compare":
        return _cmd_compare(args)
    if args.command == "cohort" and args.cohort_command == "prepare":
        return _cmd_prepare(args)
    if args.command == "cohort":
        from bench import registry

        cls = registry.cohorts.get(args.name)
        if args.out is None:
            cohort = cls.get(args.grid, n_subjects=args.n_subjects, seed=args.seed, workers=args.workers,
                             quiet=args.quiet)
        else:
            cohort = cls.build(args.out, args.grid, n_subjects=args.n_subjects, seed=args.seed,
                               workers=args.workers, quiet=args.quiet)
        splits = {s: len(cohort.split(s)) for s in ("train", "val", "test")}
        label = cohort.meta.get("label", "")
        print(f"{cohort.name}: {len(cohort.subjects)} subjects {splits} on {cohort.grid.name} at {cohort.root}"
              + (f"  [{label}]" if label else ""))
        return 0
    if args.command == "prompts":
        return _cmd_prompts(args)
    if args.command == "explain":
        return _cmd_explain(args)
    raise AssertionError(args.command)


def _cmd_prepare(args) -> int:
    from cohorts.prepare import EXCLUDED_SPLIT, prepare_cohort

    mods = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    cohort = prepare_cohort(args.name, args.raw_dir, args.out, grid=args.grid, workers=args.workers,
                            skull_strip=args.skull_strip, deformable=args.deformable, modalities=mods,
                            limit=args.limit, keep_qc_failures=args.keep_qc_failures, quiet=args.quiet)
    splits = {s: len(cohort.split(s)) for s in ("train", "val", "test")}
    excluded = sum(1 for s in cohort.subjects if s.split == EXCLUDED_SPLIT)
    print(f"{cohort.name}: {len(cohort.subjects)} scans {splits}, {excluded} excluded by QC, "
          f"{cohort.meta.get('n_failed', 0)} failed, on {cohort.grid.name} at {cohort.root}")
    if cohort.meta.get("n_failed"):
        print(f"failures: {cohort.root / 'failed.csv'}")
    return 0


def _cmd_validate(args) -> int:
    from bench.validate import ValidateConfig, check_corruptions, summary, validate

    from bench.suite import load_suite

    kinds = check_corruptions([k.strip() for k in args.corruptions.split(",") if k.strip()]
                              if args.corruptions else None, load_suite(args.suite).task)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    path = validate(ValidateConfig(suite=args.suite, out=args.out, reference=args.reference, corruptions=kinds,
                                   seed=args.seed, limit=args.limit, device=args.device, resume=args.resume,
                                   quiet=args.quiet))
    import json

    print(summary(json.loads(path.read_text())))
    print(f"\nreport card: {path}")
    return 0


def _cmd_run(args) -> int:
    from bench import registry
    from bench.args import parse_kv

    if args.generator:  # unknown names fail before any heavy import
        registry.generators.canonical(args.generator)
    if args.captioner:
        registry.captioners.canonical(args.captioner)
    if not (args.generator or args.captioner):
        raise ValueError("give --generator NAME (or --captioner NAME for a report suite); see `python -m bench ls`")
    from bench.records import load_record
    from bench.runner import RunConfig, run

    cfg = RunConfig(generator=args.generator, suite=args.suite, generator_args=parse_kv(args.generator_args),
                    captioner=args.captioner, captioner_args=parse_kv(args.captioner_args),
                    extractor_args=parse_kv(args.extractor_args), reference=args.reference, out=args.out,
                    seed=args.seed, limit=args.limit, device=args.device, resume=args.resume, quiet=args.quiet,
                    executor=args.executor, ray_address=args.ray_address, heap=args.heap)
    cfg.check()
    path = run(cfg)
    rec = load_record(path)
    print(format_results(rec))
    print(f"\nrecord: {path}")
    if args.strict and rec.get("failed_metrics"):
        print(f"error: {len(rec['failed_metrics'])} metric(s) failed: {', '.join(rec['failed_metrics'])} "
              "(re-run the same command to retry them)", file=sys.stderr)
        return 1
    return 0


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_results(rec: dict) -> str:
    """A plain-text results table of a record: the headline metrics per axis first (value, CI, the
    real-vs-real floor and the value as a multiple of it), then every metric."""
    from leaderboards import verdicts

    ref = rec["reference"]
    head = (f"{rec['generator'].get('display_name') or rec['generator']['name']} on suite {rec['suite']['name']} "
            f"(reference {ref['name']}{' — SYNTHETIC' if ref.get('synthetic') else ''}, "
            f"N={rec['suite']['n_prompts']}, seed {rec['seed']})")

    def f(x):
        return "—" if x is None else f"{x:.4g}"

    def ci(lo, hi):
        return "—" if lo is None or hi is None else f"[{f(lo)}, {f(hi)}]"

    def better(m):
        return {"higher": "higher", "lower": "lower", "target": "real value"}.get(verdicts.direction(m) or "", "?")

    lines = [head, ""]
    hl = verdicts.headline(rec)
    report = rec.get("task") == "report"  # the floor is another subject's caption: beating it is the goal
    floor_col = "other subject" if report else "real-vs-real"
    if hl:
        rows = [("axis", "headline metric", "value", "95% CI", floor_col, "x floor", "vs floor" if report else "vs real")]
        for axis, keys in hl.items():
            for key in keys:
                m = rec["metrics"][key]
                fci = verdicts.floor_ci(m)
                ratio = verdicts.ratio_to_floor(m)
                rows.append((axis, key, f(m.get("value")), ci(m.get("ci_low"), m.get("ci_high")),
                             f(m.get("floor")) + (f" {ci(*fci)}" if fci else ""),
                             "—" if ratio is None else f"x{ratio:.3g}", verdicts.versus_floor(m) or "—"))
        lines += _table(rows)
        if report:
            lines += ["", "floor = the true caption of another subject of the same modality (ceiling: the volume's own "
                      "caption); 'vs floor': the run's interval against the floor's (better = beats it)", "",
                      "all metrics:"]
        else:
            passed, why = verdicts.memorisation_gate(rec)
            lines += ["", "memorisation gate: " + {True: "passed", False: "FAILED", None: "not measured"}[passed]
                      + f" ({why})", "x floor = value / real-vs-real value (1 = real data); 'vs real': the run's "
                      "interval against the floor's (worse / at floor / better)", "", "all metrics:"]
    rows = [("metric", "value", "95% CI", floor_col, "n", "better")]
    for k, m in rec["metrics"].items():
        rows.append((k, f(m.get("value")), ci(m.get("ci_low"), m.get("ci_high")), f(m.get("floor")),
                     str(m.get("n", "")), better(m)))
    lines += _table(rows)
    warns = sorted({w for m in rec["metrics"].values() for w in m.get("warnings", [])})
    errs = [f"  {k}: {m['details']['error']}" for k, m in rec["metrics"].items()
            if m.get("details", {}).get("error")]
    if warns:
        lines += ["", "warnings:"] + [f"  {w}" for w in warns]
    if errs:
        lines += ["", "failed metrics (re-run to retry):"] + errs
    return "\n".join(lines)


def _cmd_compare(args) -> int:
    from bench.compare import CompareError, compare, to_json, to_markdown

    try:
        result = compare(args.base, args.head, force=args.force)
    except CompareError as e:
        for d in e.differences or [str(e)]:
            print(f"error: {d}", file=sys.stderr)
        print("the runs are not comparable: re-run both checkpoints on the same suite, N, reference and grid, "
              "or pass --force to compare anyway", file=sys.stderr)
        return 2
    for d in result.overridden:
        print(f"warning: --force: {d}", file=sys.stderr)
    text = to_json(result) if args.format == "json" else to_markdown(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.fail_on_regression and result.regressions:
        print("regression: " + ", ".join(m.key for m in result.regressions), file=sys.stderr)
        return 1
    return 0


def _cmd_ls(what: str) -> int:
    from bench import registry

    if what == "suites":
        import bench.suite  # noqa: F401  (registers the built-in suite files)
    reg = getattr(registry, what)
    for e in reg:
        alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
        src = "" if e.source == "builtin" else f" [{e.source}]"
        print(f"{e.name:<22} {e.description}{alias}{src}")
        if what == "protocols":  # the card: extractor, weights file and sha256, preprocessing, source
            print(f"{'':<22} {e.load().summary()}")
    return 0


def _cmd_explain(args) -> int:
    from bench.counterfactual import explain_command

    kind, index = explain_command(**{k: getattr(args, k) for k in (
        "generator", "suite", "prompt", "subject", "index", "edit", "n", "run", "out", "generator_args", "seed",
        "device", "quiet")})
    print(f"{kind}: {index}")
    return 0


def _cmd_prompts(args) -> int:
    """The suite's prompts (``index,subject_id,prompt``), or for a report suite the volumes to describe
    (``index,subject_id,image``: the NIfTI file on the suite grid)."""
    import csv

    from bench.prompts import select_prompts
    from bench.runner import resolve_cohort
    from bench.suite import load_suite

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1 (the number of prompts), got {args.limit}")
    suite = load_suite(args.suite)
    if suite.task not in ("text-to-volume", "report"):
        raise ValueError(f"suite {suite.name!r} is a {suite.task} suite: its prompts depend on the generator's own "
                         "previous volumes, so they cannot be exported for the folder adapter; run a follow-up "
                         "generator (copy-baseline, lesion-paint or your plugin with a follow_up() method) instead")
    reference_args = suite.reference_args if args.reference is None else {}
    cohort = resolve_cohort(args.reference or suite.reference, suite.grid, reference_args, args.quiet)
    n = suite.n_prompts if args.limit is None else min(args.limit, suite.n_prompts)
    if suite.task == "report":
        from bench.report import report_set

        header = ["index", "subject_id", "image"]
        rows = [(s.subject_id, str(Path(s.image).resolve()))
                for s in report_set(cohort, n, suite.seed, suite.floor_split).reference]
    else:
        header = ["index", "subject_id", "prompt"]
        rows = [(s.subject_id, s.caption) for s in select_prompts(cohort, n, suite.seed)]
    fh = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        w = csv.writer(fh)
        w.writerow(header)
        for i, row in enumerate(rows):
            w.writerow([i, *row])
    finally:
        if args.out:
            fh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Model-card figures: per modality, real volumes above generated or reconstructed ones, mid-slices.

``python -m generators.ldm3d.figures RUN_DIR --out FIG.png`` draws, from a ``bench run`` folder, the first
generated volume of each modality above its caption-matched real volume (axial and coronal
mid-slices). :mod:`generators.ldm3d.autoencoder_report` draws reconstructions with the same layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["pairs_figure", "run_figure", "main"]


def pairs_figure(path: Path, columns: Sequence[tuple[str, np.ndarray, np.ndarray | None]], names: tuple[str, str],
                 title: str) -> None:
    """One column per ``(label, top volume, bottom volume or None)``; rows: axial top, axial bottom,
    coronal top, coronal bottom (volumes (D, H, W) in [0, 1], RAS+)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from core.runfiles import mid_slices

    fig, axes = plt.subplots(4, len(columns), figsize=(2.2 * len(columns), 8.4), dpi=90, squeeze=False)
    for c, (label, top, bottom) in enumerate(columns):
        for r, (name, vol, plane) in enumerate([(names[0], top, 0), (names[1], bottom, 0), (names[0], top, 1),
                                                (names[1], bottom, 1)]):
            ax = axes[r][c]
            if vol is not None:
                ax.imshow(mid_slices(vol)[plane], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{name}\n{('axial', 'coronal')[plane]}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor="white")
    plt.close(fig)


def run_figure(run_dir: Path, path: Path, title: str | None = None) -> list[str]:
    """The first generated volume of each modality of a run, below its caption-matched real volume;
    returns the subject ids shown."""
    from cohorts.captions import parse_caption
    from core.runfiles import CohortFiles, load_generated

    record = json.loads((run_dir / "record.json").read_text())
    gen, ids = load_generated(run_dir)
    if gen is None:
        raise FileNotFoundError(f"{run_dir}/samples: no readable shard_*.npz")
    cohort, why = CohortFiles.open(record)
    if cohort is None:
        raise FileNotFoundError(why)
    modality = {p.get("subject_id"): str(parse_caption(str(p.get("text", ""))).get("modality") or "?")
                for p in record.get("prompts", []) if isinstance(p, dict)}
    columns, shown, seen = [], [], set()
    for vol, sid in zip(gen, ids):
        m = modality.get(sid, "?")
        if m in seen:
            continue
        seen.add(m)
        shown.append(sid)
        columns.append((m, cohort.volume(sid), vol))
    columns.sort(key=lambda c: c[0])
    gen_name = record.get("generator", {}).get("name", "generated")
    pairs_figure(path, columns, ("real", str(gen_name)),
                 title or f"{gen_name} on {record.get('suite', {}).get('name', '?')}: caption-matched real (above) "
                          "and generated")
    return shown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generators.ldm3d.figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a bench run folder (record.json + samples/)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    shown = run_figure(Path(args.run_dir), Path(args.out), args.title)
    print(f"{args.out}: {', '.join(shown)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

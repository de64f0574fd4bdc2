"""Atlas-space sampling grids (RAS+, MNI152 coordinates).

Each grid covers the ICBM152 2009 brain mask (x -72..72, y -107..73, z -72..82 mm) and has every
side divisible by 8 so that autoencoders with three 2x downsamplings tile it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Centre of the ICBM152 2009 brain-mask bounding box, in MNI mm.
_CENTRE_MM = (0.0, -17.0, 5.0)
_EXTENT_MM = (144.0, 192.0, 160.0)


@dataclass(frozen=True)
class Grid:
    """A regular RAS+ grid in MNI space.

    Args:
        name: short name used in suites and caches ("3mm", "2mm", "1mm").
        voxel_size: isotropic voxel size in mm.
        shape: (D, H, W) = (x, y, z) voxel counts.
    """

    name: str
    voxel_size: float
    shape: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        vs = self.voxel_size
        origin = [c - (n / 2.0 - 0.5) * vs for c, n in zip(_CENTRE_MM, self.shape)]
        aff = np.diag([vs, vs, vs, 1.0])
        aff[:3, 3] = origin
        return aff

    @property
    def voxel_volume_ml(self) -> float:
        return self.voxel_size**3 / 1000.0

    def to_dict(self) -> dict:
        return {"name": self.name, "voxel_size": self.voxel_size, "shape": list(self.shape)}


def _make(vs: float, name: str, extent=_EXTENT_MM, mult: int = 8) -> Grid:
    shape = tuple(int(np.ceil(e / vs / mult) * mult) for e in extent)
    return Grid(name, vs, shape)  # type: ignore[arg-type]


# 3 mm: z extent rounded up to 168 mm (56 voxels) so that the cerebellum (z = -72) fits.
GRIDS: dict[str, Grid] = {
    "3mm": _make(3.0, "3mm"),
    "2mm": _make(2.0, "2mm"),
    "1mm": _make(1.0, "1mm"),
}


def get_grid(name: str | Grid) -> Grid:
    if isinstance(name, Grid):
        return name
    try:
        return GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}") from None

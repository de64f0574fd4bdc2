"""`slice2d`: a 2D text-conditioned latent diffusion model on axial slices, stacked into a volume.

The baseline that shows what a volumetric model buys: every axial slice is generated on its own
(conditioned on the caption and the slice index), so each slice can look right while neighbouring
slices disagree — which the ``through_plane`` consistency metric exposes. See ``MODEL_CARD.md``.
"""

from generators.slice2d.generator import Slice2dGenerator

__all__ = ["Slice2dGenerator"]

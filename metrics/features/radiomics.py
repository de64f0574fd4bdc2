"""pyradiomics features as a cached "extractor".

Treating radiomics like any other feature extractor lets the runner's content-addressed cache hold
them: a reference volume's ~93 features are computed once per (volume bytes, configuration, mask,
pyradiomics version) and reused by every later run. The mask is the atlas brain mask on the grid,
handed in by the runner (its sha256 is in the fingerprint).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

from metrics.features.base import FeatureExtractor, check_volumes
from metrics.functional.radiomics import (DEFAULT_BIN_WIDTH, DEFAULT_FEATURE_CLASSES, RadiomicsConfig,
                                          radiomics_feature_matrix, radiomics_features,
                                          radiomics_process_pool)


@functools.lru_cache(maxsize=8)
def radiomics_feature_names(config: RadiomicsConfig) -> tuple[str, ...]:
    """Feature names (in output order) for a configuration, from one extraction on a small cube."""
    rng = np.random.default_rng(0)
    cube = rng.random((12, 12, 12)).astype(np.float32)
    mask = np.zeros(cube.shape, bool)
    mask[2:10, 2:10, 2:10] = True
    return tuple(radiomics_features(cube, mask, 1.0, config))


class RadiomicsExtractor(FeatureExtractor):
    """pyradiomics first-order and texture features inside the brain mask (van Griethuysen et al. 2017).

    Args:
        features: pyradiomics feature classes.
        bin_width: grey-level bin width on the [0, 1] intensity scale.
        resample: isotropic spacing (mm) to resample to before extraction, or None.
        workers: extraction processes.
        brain_mask: (D, H, W) bool mask; the runner passes the cohort's atlas brain mask. None: each
            volume's non-zero voxels.
    """

    name = "radiomics"
    version = "1"

    def __init__(self, *, features: tuple[str, ...] | list[str] = DEFAULT_FEATURE_CLASSES,
                 bin_width: float = DEFAULT_BIN_WIDTH, resample: float | None = None, workers: int = 2,
                 brain_mask: np.ndarray | None = None):
        if isinstance(features, str):
            features = tuple(f.strip() for f in features.split("+"))
        self.config = RadiomicsConfig(feature_classes=tuple(features), bin_width=float(bin_width),
                                      resample=None if resample is None else float(resample))
        self.workers = int(workers)
        self.brain_mask = None if brain_mask is None else np.asarray(brain_mask, dtype=bool)
        self.feature_names = list(radiomics_feature_names(self.config))
        self.dim = len(self.feature_names)
        self._pool = None  # extraction processes, started on first use and kept until close()

    def close(self) -> None:
        """Stop the extraction processes (the extractor starts new ones if called again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __call__(self, volumes: np.ndarray, voxel_size: float) -> np.ndarray:
        vols = check_volumes(volumes, voxel_size, who=self.name)
        mask = self.brain_mask if self.brain_mask is not None else vols[:, 0] > 0
        if self.workers > 1 and self._pool is None:
            self._pool = radiomics_process_pool(self.workers)
        names, feats = radiomics_feature_matrix(vols, mask, voxel_size, self.config, workers=self.workers,
                                                executor=self._pool)
        if names != self.feature_names:
            raise RuntimeError("radiomics: feature names differ from the configuration's; "
                               "is a different pyradiomics installed in the worker processes?")
        return feats

    def fingerprint(self) -> dict[str, Any]:
        mask = "per-volume non-zero voxels" if self.brain_mask is None else \
            hashlib.sha256(np.packbits(self.brain_mask).tobytes() + str(self.brain_mask.shape).encode()).hexdigest()
        return {"name": self.name, "version": self.version, **self.config.to_dict(), "mask": mask,
                "weights_sha256": None, "preprocessing": "intensities as given ([0, 1]), no normalisation"}

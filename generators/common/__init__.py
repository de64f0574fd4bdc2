"""Code shared by the in-house latent diffusion generators (:mod:`generators.ldm3d`, :mod:`generators.slice2d`).

Submodules (import them directly; nothing heavy is imported here):

* :mod:`generators.common.config`: dataclass-from-dict builder that refuses unknown keys, YAML loading,
  the validation and derived sizes of the shared config sections.
* :mod:`generators.common.checkpoint`: safetensors checkpoints with JSON metadata in the header (atomic,
  mode from the umask, optional float16 storage) and the architecture-mismatch check.
* :mod:`generators.common.networks`: MONAI autoencoder / UNet construction, the DDPM scheduler and the
  latent padding / scaling shared by both models.
* :mod:`generators.common.training`: resumable-training helpers (atomic ``torch.save``, ``weights_only``
  state loading, per-step RNG, loss curves, EMA, warm-up, deadlines, progress bars, losses).
"""

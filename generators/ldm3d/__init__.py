"""ldm3d: the in-house text-conditioned 3D latent diffusion model.

Rombach et al. 2022 (latent diffusion), Pinaya et al. 2022 (3D brain LDM), Ho & Salimans 2022
(classifier-free guidance), Song et al. 2021 (DDIM). Heavy imports (torch, MONAI) happen in the
submodules: ``generators.ldm3d.generator:Ldm3dGenerator`` is the registry entry.
"""

__all__ = ["Ldm3dGenerator", "make_latent_encoder", "explain"]


def __getattr__(name):
    if name in ("Ldm3dGenerator", "make_latent_encoder"):
        from generators.ldm3d import generator

        return getattr(generator, name)
    if name == "explain":
        from generators.ldm3d.explain import explain

        return explain
    raise AttributeError(name)

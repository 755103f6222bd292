"""Generator backends beyond the built-in pixel model: Stable Diffusion img2img and class-conditional
DiT, both in the VAE latent space, chosen by ``load_generator`` from a model folder's contents.

Heavy imports (diffusers pipelines, transformers) happen only when such a model is loaded.
"""

from curator.models.backends.loader import (
    DIT,
    PIXEL,
    STABLE_DIFFUSION,
    backend_defaults,
    configure_generator,
    detect_backend,
    load_generator,
)

__all__ = [
    "DIT",
    "PIXEL",
    "STABLE_DIFFUSION",
    "backend_defaults",
    "configure_generator",
    "detect_backend",
    "load_generator",
]

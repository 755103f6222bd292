"""The curator: detector-guided dataset distillation (arXiv 2507.13074) as a library, CLI and app."""

__version__ = "0.1.0"

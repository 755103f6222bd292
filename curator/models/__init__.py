"""The models: the built-in pixel generator (``generator``), the detector (``detector``), the large
backends (``backends``: Stable Diffusion, DiT) and how a run loads them (``loading``)."""

"""What the large-model backends share: where weights come from, precision, per-image seeded
noise, batches that shrink to fit GPU memory, and readable class names.

Nothing here downloads: a Hugging Face repo id is only looked up in the local cache
(``local_files_only=True``), so a missing model is a ``ModelFileError`` that names it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from curator.config import ConfigError
from curator.models.generator import ModelFileError, ProgressFn, check_request  # noqa: F401 (re-exported)

IMAGENETTE_FILE = Path(__file__).with_name("imagenette.json")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_model_dir(spec: str) -> Path:
    """A local model folder, or the cached snapshot of a Hugging Face repo id (never downloaded)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelFileError(f"generator path {path} is a file; expected a model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(spec), local_files_only=True))
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError, HFValidationError (not a repo id)
        raise ModelFileError(
            f"generator {spec!r} is neither a local folder nor a model in the Hugging Face cache; nothing is "
            f"downloaded at run time: fetch it once on a machine with internet (`hf download {spec}`) "
            "or pass the model's local folder"
        ) from exc


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` = float16 on CUDA (half the memory, the usual precision for SD 1.x and DiT), float32 on CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"parameter dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per image: its noise depends on its seed only, on any device or batch."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def sdedit_steps(steps: int, strength: float) -> int:
    """Total scheduler steps so that ``int(steps * strength)`` (the steps actually run) is at least 1."""
    return max(steps, math.ceil(1 / strength))


class BatchSizer:
    """Runs work in slices of at most ``batch_size`` images; on CUDA out-of-memory it halves the slice,
    retries, and remembers the size that fitted (``limit``) for later calls.

    Every image depends only on its own seed, so how the work is sliced never changes the images.
    """

    def __init__(self) -> None:
        self.limit: int | None = None

    def run(
        self, n: int, batch_size: int, fn: Callable[[int, int], torch.Tensor], progress: ProgressFn | None = None
    ) -> torch.Tensor:
        out, lo = [], 0
        while lo < n:
            size = min(batch_size, self.limit or batch_size, n - lo)
            try:
                out.append(fn(lo, lo + size))
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                self.limit = max(1, size // 2)
                torch.cuda.empty_cache()
                continue
            lo += size
            if progress:
                progress(lo, n)
        return torch.cat(out)


@lru_cache(maxsize=1)
def imagenette_table() -> dict[str, dict]:
    """WordNet id -> {"imagenet_id": int, "names": [str, ...]} for ImageNette's 10 classes."""
    return json.loads(IMAGENETTE_FILE.read_text())["classes"]


def readable_name(class_name: str) -> str:
    """A prompt-friendly name: ImageNette WordNet ids become their names, ``_``/``-`` become spaces."""
    entry = imagenette_table().get(class_name)
    if entry:
        return entry["names"][0]
    return class_name.replace("_", " ").replace("-", " ").strip()

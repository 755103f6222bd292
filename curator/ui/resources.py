"""App settings, the process-wide cache of loaded models and data, and the device in use.

Loading the shipped models and mnist5k costs seconds, so each is loaded once per process and
shared by every session (generation itself is serialised through one queue, see ``layout``).
Folder datasets are cached too, keyed by path and the model's input size; a user-supplied path
that changes on disk while the app runs is not noticed until the server restarts.

The cached generator is never changed by a run: ``components`` hands each call its own
configured copy (a run's class names and prompts), which shares the weights read-only.

Public mode (``AppSettings.public``: on a Hugging Face Space, or ``CURATOR_PUBLIC=1``) keeps each
visitor's runs, images and exports to that visitor (``curator.ui.visitors``) and deletes old
ones (``curator.ui.cleanup``); private mode, the default for ``python app.py``, deletes nothing.
"""

from __future__ import annotations

import os
import secrets as _secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from curator.config import RunConfig
from curator.data import Dataset, load_dataset
from curator.models.detector import Detector
from curator.models.generator import Generator, ModelFileError
from curator.models.loading import check_compatible, load_generator, prepare_generator
from curator.training import pick_device
from curator.ui.uploads import UploadLimits

REPO = Path(__file__).resolve().parents[2]


def _env_int(var: str, name: str) -> int:
    """A positive integer from environment variable ``var``, else ``UploadLimits``'s default ``name``."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return getattr(UploadLimits, name)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{var}={raw!r} must be at least 1")
    return value


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_public() -> bool:
    """Public mode: ``$CURATOR_PUBLIC`` (1/true/yes or 0/false/no) when set, else on a Hugging Face
    Space (``$SPACE_ID`` set)."""
    raw = os.environ.get("CURATOR_PUBLIC", "").strip()
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    if raw:
        raise ValueError(f"CURATOR_PUBLIC={raw!r} must be 1, true, yes (public) or 0, false, no (private)")
    return bool(os.environ.get("SPACE_ID", "").strip())


def _env_number(var: str, default: float, kind: type = float) -> float:
    """A positive number (``kind`` int or float) from environment variable ``var``, else ``default``."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{var}={raw!r} is not {what}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{var}={raw!r} must be a positive finite number")
    return value


def _env_secret() -> bytes | None:
    raw = os.environ.get("CURATOR_SECRET", "")
    if not raw:
        return None
    if len(raw) < 16:
        raise ValueError("CURATOR_SECRET must be at least 16 characters long")
    return raw.encode()


def read_or_create_secret(path: Path) -> bytes:
    """The random bytes in ``path`` (mode 0600), 32 of them made on first use. The file appears
    whole or not at all (written aside, then linked into place), so concurrent starts agree."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{_secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_secrets.token_bytes(32))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            except OSError:  # no hard links on this file system
                if not path.exists():
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    data = path.read_bytes()
    if len(data) < 16:
        raise ValueError(f"{path} holds {len(data)} bytes; delete it (a new secret is made) or set CURATOR_SECRET")
    return data


@dataclass
class AppSettings:
    """Where runs and uploads live, the limits on an uploaded zip, and the public mode. ``runs_dir``
    defaults to ``$CURATOR_RUNS`` or ``<repo>/runs``; each limit to its environment variable or
    ``UploadLimits``.

    ``public`` (``$CURATOR_PUBLIC``, else True on a Hugging Face Space, ``$SPACE_ID``): visitors see
    only their own runs; runs, uploads and exports older than ``max_age_hours``
    (``$CURATOR_MAX_AGE_HOURS``, 24) are deleted every ``sweep_interval_s``
    (``$CURATOR_SWEEP_INTERVAL_S``, 600) and the oldest go first beyond ``disk_cap_mb``
    (``$CURATOR_DISK_CAP_MB``, 5000). ``secret`` keys the visitors' folder names (HMAC):
    ``$CURATOR_SECRET``, else 32 random bytes kept in ``RUNS/_secret`` (made in public mode only;
    empty in private mode, where nothing needs it). ``server_folders`` (``$CURATOR_SERVER_FOLDERS``,
    paths joined by ``os.pathsep``): in public mode, the only places a visitor may name as a dataset
    or model folder (none by default: built-in data, uploads and the shipped models only)."""

    runs_dir: Path = field(default_factory=lambda: Path(os.environ.get("CURATOR_RUNS", REPO / "runs")))
    max_upload_mb: int = field(default_factory=lambda: _env_int("CURATOR_MAX_UPLOAD_MB", "max_upload_mb"))
    max_uncompressed_mb: int = field(
        default_factory=lambda: _env_int("CURATOR_MAX_UNCOMPRESSED_MB", "max_uncompressed_mb")
    )
    max_files: int = field(default_factory=lambda: _env_int("CURATOR_MAX_FILES", "max_files"))
    max_image_pixels: int = field(default_factory=lambda: _env_int("CURATOR_MAX_IMAGE_PIXELS", "max_image_pixels"))
    public: bool = field(default_factory=_env_public)
    max_age_hours: float = field(default_factory=lambda: _env_number("CURATOR_MAX_AGE_HOURS", 24.0))
    disk_cap_mb: int = field(default_factory=lambda: _env_number("CURATOR_DISK_CAP_MB", 5000, int))
    sweep_interval_s: float = field(default_factory=lambda: _env_number("CURATOR_SWEEP_INTERVAL_S", 600.0))
    secret: bytes | None = field(default_factory=_env_secret, repr=False)
    server_folders: list[Path] = field(
        default_factory=lambda: [Path(p) for p in os.environ.get("CURATOR_SERVER_FOLDERS", "").split(os.pathsep) if p]
    )

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.server_folders = [Path(p).resolve() for p in self.server_folders]
        for name in ("max_age_hours", "disk_cap_mb", "sweep_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ValueError(f"AppSettings.{name} must be a positive number, got {value!r}")
        if self.secret is None:
            self.secret = read_or_create_secret(self.secret_file) if self.public else b""

    def folder_allowed(self, path: str | Path) -> bool:
        """Whether a visitor may name ``path`` as a dataset or model folder: always in private mode;
        in public mode only inside ``server_folders`` and never inside the runs folder."""
        if not self.public:
            return True
        p = Path(path).resolve()
        inside = [root for root in self.server_folders if p == root or root in p.parents]
        return bool(inside) and not (p == self.runs_dir or self.runs_dir in p.parents)

    @property
    def secret_file(self) -> Path:
        return self.runs_dir / "_secret"

    @property
    def upload_limits(self) -> UploadLimits:
        return UploadLimits(self.max_upload_mb, self.max_uncompressed_mb, self.max_files, self.max_image_pixels)

    @property
    def uploads_dir(self) -> Path:
        return self.runs_dir / "_uploads"

    @property
    def exports_dir(self) -> Path:
        return self.runs_dir / "_exports"

    @property
    def served_dir(self) -> Path:
        """Links to the run images pages show: the only part of the runs served besides exports."""
        return self.runs_dir / "_served"


_LOCK = threading.RLock()
_GENERATORS: dict[tuple[str, str], Generator] = {}
_DETECTORS: dict[tuple[str, str], Detector] = {}
_DATA: dict[tuple, Dataset] = {}


def device_for(config: RunConfig) -> torch.device:
    return pick_device(config.device)


def device_text(device: str = "auto") -> str:
    """One line naming the device generation runs on, e.g. ``cpu (1 torch thread)`` or the GPU name."""
    dev = pick_device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} torch thread{'s' * (torch.get_num_threads() != 1)}, no GPU found)"


def generator(path: str, device: torch.device, config: RunConfig | None = None) -> Generator:
    key = (str(Path(path).resolve()), str(device), config.dtype if config else "auto")
    with _LOCK:
        if key not in _GENERATORS:
            try:
                _GENERATORS[key] = load_generator(path, device, config=config)
            except ModelFileError:
                raise
            except (ValueError, KeyError, OSError, RuntimeError, TypeError) as exc:
                raise ModelFileError(f"cannot load a generator from {path}: {type(exc).__name__}: {exc}") from exc
        return _GENERATORS[key]


def detector(path: str, device: torch.device) -> Detector:
    key = (str(Path(path).resolve()), str(device))
    with _LOCK:
        if key not in _DETECTORS:
            try:
                _DETECTORS[key] = Detector.load(path, device)
            except ModelFileError:
                raise
            except (ValueError, KeyError, OSError, RuntimeError, TypeError) as exc:
                raise ModelFileError(f"cannot load a detector from {path}: {type(exc).__name__}: {exc}") from exc
        return _DETECTORS[key]


def dataset(config: RunConfig, size: int, channels: int) -> Dataset:
    spec = config.data if config.data == "mnist5k" else str(Path(config.data).resolve())
    key = (spec, size, channels, config.test_fraction, config.seed)
    with _LOCK:
        if key not in _DATA:
            if len(_DATA) >= 4:  # keep memory bounded: folder datasets can be large
                _DATA.pop(next(k for k in _DATA if k[0] != "mnist5k") if len(_DATA) > 1 else next(iter(_DATA)))
            _DATA[key] = load_dataset(
                config.data, size=size, channels=channels, test_fraction=config.test_fraction, seed=config.seed
            )
        return _DATA[key]


def components(config: RunConfig) -> tuple[Dataset, Generator, Detector]:
    """(data, generator, detector) for a run's config, loaded once per process and checked to fit together."""
    dev = device_for(config)
    gen = generator(config.generator, dev, config)
    det = detector(config.detector, dev)
    data = dataset(config, gen.resolution, gen.channels)
    # this run's own copy: prompts / ImageNet ids for the large backends; the cached one stays as loaded
    gen = prepare_generator(gen, data.class_names, config)
    check_compatible(data, gen, det)
    return data, gen, det

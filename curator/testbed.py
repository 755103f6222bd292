"""A synthetic ImageFolder of up to thousands of classes: procedurally drawn glyphs.

Why: the curator has to be tried at ImageNet's scale (1,000 classes) on a laptop's CPU. Real data
of that many classes is big and slow; this testbed is small (16x16 grayscale by default) and cheap,
yet hard enough that a small detector makes real mistakes.

Each class is a glyph of a few quadratic Bezier strokes whose control points come from the seed
and the class index alone (so class ``c`` is the same glyph in a 5-class and a 1,000-class
testbed of one seed). A class is kept only when its clean rendering differs enough from every
earlier class (cosine similarity of the pixels below ``max_similarity``), so classes are distinct.
Each sample redraws its class's glyph with per-sample jitter scaled by ``jitter``: the control
points move, the glyph is rotated, scaled, sheared and shifted, the stroke width varies, and
Gaussian pixel noise of standard deviation ``noise`` (in [0, 1] pixel units) is added.

Everything is deterministic from ``seed``: the same arguments write byte-identical PNG files.

    python -m curator make-testbed data/glyphs1000 --classes 1000 --per-class 20 --size 16  # the shipped models' data
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curator.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

# numpy and PIL are imported inside the functions: the CLI reads TestbedSpec's defaults for its
# --help, and must stay light (no numpy) until a command runs.

SUPERSAMPLE = 4  # strokes are drawn at 4x the image side, then box-filtered down (anti-aliasing)
MAX_TRIES = 200  # glyph draws per class before the class count is declared too high for the rules


@dataclass(frozen=True)
class TestbedSpec:
    """What a testbed is made of; written to ``OUT/testbed.json`` beside the images."""

    __test__ = False  # a dataclass named Test*: not a pytest test class

    classes: int = 1000
    per_class: int = 20  # images per class, train and test together
    test_per_class: int = 4  # of ``per_class``, how many go to test/
    size: int = 16  # image side in pixels
    seed: int = 0
    jitter: float = 0.6  # scale of the per-sample geometric jitter (0 = every sample is the clean glyph);
    # 0.6 is what assets/testbed-* were trained on (benchmarks/TESTBED.md)
    noise: float = 0.05  # std of the Gaussian pixel noise, in [0, 1] pixel units
    strokes: tuple[int, int] = (2, 3)  # strokes per glyph, inclusive range
    max_similarity: float = 0.9  # cosine similarity of two classes' clean renderings must stay below this

    def validate(self) -> TestbedSpec:
        checks = [
            ("classes", self.classes >= 2, "at least 2"),
            ("per_class", self.per_class >= 2, "at least 2"),
            ("test_per_class", 1 <= self.test_per_class < self.per_class, "at least 1 and below per_class"),
            ("size", 8 <= self.size <= 256, "between 8 and 256"),
            ("jitter", 0 <= self.jitter <= 5, "in [0, 5]"),
            ("noise", 0 <= self.noise <= 1, "in [0, 1]"),
            ("strokes", 1 <= self.strokes[0] <= self.strokes[1] <= 8, "a range within 1..8"),
            ("max_similarity", 0 < self.max_similarity <= 1, "in (0, 1]"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"parameter {name} must be {rule}, got {getattr(self, name)!r}")
        return self


def class_name(index: int, classes: int) -> str:
    """Folder name of class ``index``: zero-padded so that name order is index order."""
    return f"glyph{index:0{max(3, len(str(classes - 1)))}d}"


def _bezier(points: np.ndarray, n: int = 16) -> np.ndarray:
    """``n`` points along each quadratic Bezier curve of ``points`` [..., 3, 2] -> [..., n, 2]."""
    import numpy as np

    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = points[..., 0:1, :], points[..., 1:2, :], points[..., 2:3, :]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def render(glyph: np.ndarray, size: int, width: float = 0.09, noise: float = 0.0,
           rng: np.random.Generator | None = None) -> np.ndarray:  # fmt: skip
    """The glyph as uint8 [size, size] (white strokes on black): strokes ``width`` (a fraction of
    the side) wide, drawn at 4x and box-filtered down, plus Gaussian noise of std ``noise``."""
    import numpy as np
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    im = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(im)
    w = max(1, round(width * big))
    for curve in _bezier(glyph):
        xy = [(float(x * big), float(y * big)) for x, y in curve]
        draw.line(xy, fill=255, width=w, joint="curve")
        for x, y in (xy[0], xy[-1]):  # round caps
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
    x = np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    if noise > 0:
        if rng is None:
            raise ValueError("noise needs an rng")
        x = x + rng.normal(0.0, noise, x.shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _random_glyph(rng: np.random.Generator, strokes: tuple[int, int]) -> np.ndarray:
    """A glyph: [strokes, 3, 2] quadratic Bezier control points in the unit square."""
    n = int(rng.integers(strokes[0], strokes[1] + 1))
    return rng.uniform(0.18, 0.82, size=(n, 3, 2))


def make_glyphs(spec: TestbedSpec) -> list[np.ndarray]:
    """One glyph per class; class ``c`` depends only on the seed, ``c`` and the classes before it.

    A draw is rejected while its clean rendering is too similar to an earlier class's (cosine
    similarity of the pixels at or above ``max_similarity``); DataError when no draw passes.
    """
    import numpy as np

    glyphs: list[np.ndarray] = []
    kept = np.zeros((spec.classes, spec.size * spec.size), dtype=np.float32)
    for c in range(spec.classes):
        rng = np.random.default_rng([spec.seed, c, 0])
        for _ in range(MAX_TRIES):
            g = _random_glyph(rng, spec.strokes)
            v = render(g, spec.size).astype(np.float32).ravel()
            v /= max(float(np.linalg.norm(v)), 1e-6)
            if c == 0 or float((kept[:c] @ v).max()) < spec.max_similarity:
                break
        else:
            raise DataError(
                f"cannot draw {spec.classes} distinct glyphs at {spec.size}px: class {c} stayed within cosine "
                f"similarity {spec.max_similarity} of an earlier class; use fewer classes, a larger --size, "
                "or a higher max_similarity"
            )
        glyphs.append(g)
        kept[c] = v
    return glyphs


def jittered(glyph: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[np.ndarray, float]:
    """A sample's variant of ``glyph``: moved control points, then an affine map about the centre
    (rotation, scale, shear, shift), all scaled by ``jitter``; also the stroke width."""
    import numpy as np

    g = glyph + rng.normal(0.0, 0.03 * jitter, glyph.shape)
    angle = rng.normal(0.0, math.radians(10.0) * jitter)
    scale = math.exp(rng.normal(0.0, 0.08 * jitter))
    shear = rng.normal(0.0, 0.1 * jitter)
    shift = rng.normal(0.0, 0.05 * jitter, 2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    a = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    g = (g - 0.5) @ a.T + 0.5 + shift
    width = 0.09 * math.exp(rng.normal(0.0, 0.15 * jitter))
    return g, width


def sample(glyph: np.ndarray, spec: TestbedSpec, label: int, index: int) -> np.ndarray:
    """Sample ``index`` of class ``label`` (indices ``0..per_class-1``; the last ``test_per_class``
    are the test split) as uint8 [size, size]; seeded by (seed, label, index) alone."""
    import numpy as np

    rng = np.random.default_rng([spec.seed, label, 1, index])
    g, width = jittered(glyph, rng, spec.jitter)
    return render(g, spec.size, width, spec.noise, rng)


def make_testbed(out: str | os.PathLike, spec: TestbedSpec | None = None, **kwargs) -> Path:
    """Write ``out/train/<class>/<i>.png`` and ``out/test/<class>/<i>.png`` and ``out/testbed.json``.

    ``kwargs`` are :class:`TestbedSpec` fields (when ``spec`` is None). ``out`` must not exist or be
    empty (FileExistsError otherwise), so an old testbed is never mixed into a new one.
    """
    from PIL import Image

    spec = (spec or TestbedSpec(**kwargs)).validate()
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"testbed folder {out} already exists and is not empty; choose a new folder")
    glyphs = make_glyphs(spec)
    n_train = spec.per_class - spec.test_per_class
    for label, glyph in enumerate(glyphs):
        name = class_name(label, spec.classes)
        for split in ("train", "test"):
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(spec.per_class):
            split, j = ("train", i) if i < n_train else ("test", i - n_train)
            Image.fromarray(sample(glyph, spec, label, i)).save(out / split / name / f"{j:03d}.png")
    (out / "testbed.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out

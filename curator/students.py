"""Students: the networks trained on a distilled set, the two label protocols, and how they are tested.

    model = train_student(images, labels, num_classes, student="convnet", seed=0)          # hard labels
    model = train_student(images, labels, num_classes, student="resnet10t", teacher=t,     # soft labels
                          temperature=4.0, progress=on_epoch, cancel=should_stop)
    scores = score_student(model, test_split, num_classes)   # top-1 and the confusion matrix

Students, chosen by name:

* ``convnet``: the DC/DM "ConvNet-3" (3 blocks of conv 3x3 with 128 channels, instance norm
  (``GroupNorm(128, 128)``), ReLU, 2x2 average pooling, then one linear layer);
* any other name is a **timm** model, made with ``timm.create_model(name, pretrained=False,
  num_classes=..., in_chans=...)`` (e.g. ``resnet10t``, ``resnet18``): the cross-architecture
  student. It takes the images at their own size (28x28 grayscale works: timm's ResNets pool globally).

Protocols (``teacher`` None or given):

* **hard** labels: cross-entropy on the set's labels (DC/DM).
* **soft** labels: knowledge distillation, as SRe2L and RDED evaluate: each minibatch is augmented,
  the teacher (the run's detector) is evaluated on *the same augmented views*, and the student
  minimises ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` at temperature ``T``
  (default ``DEFAULT_TEMPERATURE``). The set's labels are not used. Everything else (optimiser,
  schedule, epochs, augmentation) is the hard protocol's, so the two differ in the target only; this
  is the documented simpler variant of SRe2L/RDED, which also change the optimiser (AdamW, cosine).

Optimisation (both protocols): SGD (lr 0.01, momentum 0.9, weight decay 5e-4), the learning rate
divided by 10 at half the epochs, minibatches of 256 (full batch for smaller sets), about 300 SGD
steps (``default_epochs``), per-batch random shift (up to 1/8 of the side), rotation (up to 15
degrees) and scale (0.9..1.1); no flips unless asked (digits are not mirror-symmetric). Each seed
draws its own initialisation and augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curator.data import DataError, ImageSet
from curator.errors import ConfigError

BATCH_SIZE = 256
TRAIN_STEPS = 300  # SGD steps of the protocol's default length (see ``default_epochs``)
DEFAULT_TEMPERATURE = 4.0  # soft labels: SRe2L's ImageNet-1K setting
PROTOCOLS = ("hard", "soft")
TIMM_EXAMPLES = ("resnet10t", "resnet18")  # timm students named in help texts; any timm name works


def default_epochs(n_images: int, batch_size: int = BATCH_SIZE) -> int:
    """Epochs for about ``TRAIN_STEPS`` SGD steps: 300 epochs (full batch) up to 256 images,
    fewer for larger sets (150 at 500 images). DC/DM train 1,000 epochs; measured on mnist5k at
    IPC 1, 1,000 epochs gave the same accuracy as 300 at 3.5x the time."""
    batches = max(1, math.ceil(n_images / batch_size))
    return max(1, math.ceil(TRAIN_STEPS / batches))


# --- the students ------------------------------------------------------------------------------
class ConvNet(nn.Module):
    """DC/DM ConvNet: ``depth`` x [conv 3x3 ``width``, instance norm, ReLU, avg-pool 2x2] + linear.

    As in the DC reference code, a 1-channel 28-pixel input gets padding 3 in the first conv
    (28 -> 32), so the three poolings leave a 4x4 map.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        size, c_in = image_size, channels
        for d in range(depth):
            pad = 3 if (d == 0 and channels == 1 and image_size == 28) else 1
            layers += [
                nn.Conv2d(c_in, width, 3, padding=pad),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            size = (size + 2 * pad - 2) // 2
            c_in = width
        if size < 1:
            raise DataError(f"images of {image_size} pixels are too small for a depth-{depth} ConvNet")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def check_student(name: str) -> str:
    """``name`` if it names a student (``convnet`` or a timm model), else a ConfigError naming it."""
    if name == "convnet":
        return name
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"unknown student {name!r}: use convnet or a timm model name (e.g. {', '.join(TIMM_EXAMPLES)})"
        )
    return name


def build_student(name: str, channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised student (the caller seeds torch first): ConvNet-3 or a timm model."""
    if check_student(name) == "convnet":
        return ConvNet(channels, num_classes, image_size)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)


# --- training ----------------------------------------------------------------------------------
def augment(x: torch.Tensor, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Random shift (up to 1/8 of the side), rotation (up to 15 deg) and scale (0.9..1.1) per image,
    one batched ``grid_sample``; mirror flips only when ``flip``. Empty borders are black (0)."""
    n = len(x)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(15)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.25  # grid units: [-1, 1] spans the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    row0 = torch.stack([cos * sx, -sin, shift[:, 0]], 1)
    row1 = torch.stack([sin * sx, cos, shift[:, 1]], 1)
    theta = torch.stack([row0, row1], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Student input: pixels in [0, 1] mapped to [-1, 1]."""
    return (x - 0.5) / 0.5


Teacher = Callable[[torch.Tensor], torch.Tensor]  # augmented views [N, C, H, W] in [0, 1] -> logits [N, classes]


def detector_teacher(detector, class_names: Sequence[str]) -> Teacher:
    """The detector as a teacher: its logits on the student's views, columns in ``class_names`` order:
    matched by name, else by index when the counts agree (as the pipeline reads the detector). A
    DataError names the classes the detector does not know."""
    missing = [c for c in class_names if c not in detector.class_names]
    if missing and detector.num_classes != len(class_names):
        raise DataError(f"the detector knows no class {missing}: it cannot teach a set with these classes")
    order = range(len(class_names)) if missing else [detector.class_names.index(c) for c in class_names]
    cols = torch.as_tensor(list(order))
    detector.model.eval()

    @torch.no_grad()
    def teach(views: torch.Tensor) -> torch.Tensor:
        logits, _ = detector.forward(detector.preprocess(views.cpu()).to(detector.device))
        return logits.float()[:, cols.to(logits.device)]

    return teach


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (Hinton et al.)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
        log_target=True,
    ) * (t * t)  # fmt: skip


def _cancelled(reason: str) -> Exception:
    from curator.engine.base import Cancelled  # the one Cancelled the app's jobs catch

    return Cancelled(reason)


def train_student(
    images: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    *,
    student: str = "convnet",
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int = BATCH_SIZE,
    lr: float = 0.01,
    flip: bool = False,
    device: torch.device | str = "cpu",
    teacher: Teacher | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> nn.Module:
    """Train a fresh student on ``images`` [N, C, H, W] in [0, 1] with class indices ``labels``.

    ``teacher`` None trains on hard labels; a teacher (``detector_teacher``) trains on its soft
    labels at ``temperature``. ``epochs`` None means ``default_epochs(len(images))``.
    ``progress(epoch, epochs)`` is called after each epoch; ``cancel()`` is checked before each
    step and raises ``curator.engine.Cancelled`` when it returns True."""
    if len(images) == 0:
        raise DataError("the training set is empty: nothing to train a student on")
    epochs = default_epochs(len(images), batch_size) if epochs is None else epochs
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    if teacher is not None and not temperature > 0:
        raise ConfigError(f"the temperature must be above 0, got {temperature}")
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_student(student, images.shape[1], num_classes, images.shape[-1]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs // 2], 0.1)
    x_all, y_all = images.float(), torch.as_tensor(labels, dtype=torch.long)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for lo in range(0, len(perm), batch_size):
            if cancel is not None and cancel():
                raise _cancelled(f"student cancelled in epoch {epoch + 1} of {epochs}")
            idx = perm[lo : lo + batch_size]
            views = augment(x_all[idx], gen, flip)
            out = model(normalize(views).to(device))
            if teacher is None:
                loss = F.cross_entropy(out, y_all[idx].to(device))
            else:
                loss = kd_loss(out, teacher(views).to(device), temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    return model.eval()


# --- testing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentScores:
    """A student on the real test split: top-1 in [0, 1] and the confusion matrix
    [true class, predicted class] of image counts."""

    accuracy: float
    confusion: np.ndarray


@torch.no_grad()
def score_student(model: nn.Module, test: ImageSet, num_classes: int, batch_size: int = 500) -> StudentScores:
    """Top-1 and the confusion matrix of ``model`` on ``test``."""
    model.eval()
    device = next(model.parameters()).device
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for lo in range(0, len(test), batch_size):
        x = normalize(test.load(np.arange(lo, min(lo + batch_size, len(test))))).to(device)
        pred = model(x).argmax(1).cpu().numpy()
        np.add.at(confusion, (test.labels[lo : lo + batch_size], pred), 1)
    return StudentScores(float(np.trace(confusion) / max(1, confusion.sum())), confusion)


def top1_accuracy(model: nn.Module, test: ImageSet, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``test``."""
    model.eval()
    device = next(model.parameters()).device
    hits = 0
    with torch.no_grad():
        for lo in range(0, len(test), batch_size):
            x = normalize(test.load(np.arange(lo, min(lo + batch_size, len(test))))).to(device)
            hits += int((model(x).argmax(1).cpu().numpy() == test.labels[lo : lo + batch_size]).sum())
    return hits / max(1, len(test))

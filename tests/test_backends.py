"""Large-model backends, offline: tiny Stable Diffusion and DiT pipelines and a timm resnet18 detector
are built from configs here, saved to folders, loaded back through the project's loaders, and run
through the whole pipeline (2 classes, 2 steps, CPU) and the export. Nothing downloads.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
from conftest import write_image_folder

from curator.cli import _config_from_args, build_parser
from curator.cli import main as cli_main
from curator.config import ConfigError, RunConfig
from curator.engine import LocalEngine
from curator.export import export_run
from curator.models.backends import backend_defaults, detect_backend
from curator.models.backends.dit import DiTGenerator, load_class_map
from curator.models.backends.stable_diffusion import StableDiffusionGenerator
from curator.models.detector import Detector
from curator.models.generator import ModelFileError, PixelDiffusion
from curator.models.loading import load_generator, prepare_generator
from curator.store import RunStore, load_png

torch.set_num_threads(1)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def _tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over single letters (word-final letters end in ``</w>``), a few merges."""
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = specials + letters + [f"{c}</w>" for c in letters] + ["ch", "ch</w>", "te", "en</w>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [("c", "h"), ("c", "h</w>"), ("t", "e"), ("e", "n</w>")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=24,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=2,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    from diffusers import DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # learned sigma, as in DiT-XL-2
        num_layers=1,
        sample_size=16,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    folder = tmp_path_factory.mktemp("models") / "tiny-dit"
    DiTPipeline(transformer, _tiny_vae(), DPMSolverMultistepScheduler()).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus"}  # as the hub DiT has
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory, rgb_folder):
    """resnet18 fine-tuned through the CLI (``--model``) from a local 'pretrained' weights file."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    state = timm.create_model("resnet18", num_classes=1000).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, root / "resnet18.safetensors")
    out = root / "detector"
    argv = ["train-detector", "--data", str(rgb_folder), "--out", str(out), "--model", "resnet18", "--pretrained",
            "--pretrained-file", str(root / "resnet18.safetensors"), "--epochs", "1", "--size", "32",
            "--batch-size", "16", "--device", "cpu"]
    assert cli_main(argv) == 0
    return out


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), {"tench": 10, "goldfish": 10}, size=24, rgb=True)


def _run_and_export(tmp_path, config: RunConfig):
    pipe = LocalEngine.create(config, str(tmp_path / "runs"))
    summaries = pipe.run()
    assert [s.images for s in summaries] == [config.ipc] * 2
    assert all(s.status == "done" for s in summaries)
    assert sum(s.anomalies for s in summaries) == 2 * config.ipc  # tau = 1: every image is refined
    out = export_run(pipe.store, tmp_path / "export")
    meta = pd.read_parquet(out / "metadata.parquet")
    for name in meta["file_name"]:
        assert load_png(out / name).shape == (3, pipe.generator.resolution, pipe.generator.resolution)
    return pipe, meta


def test_detect_backend(sd_folder, dit_folder, tmp_path):
    assert detect_backend(sd_folder) == "stable-diffusion"
    assert detect_backend(dit_folder) == "dit"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelFileError, match="StableDiffusionXLPipeline"):
        detect_backend(tmp_path)
    assert backend_defaults(str(sd_folder))["guidance"] == 8.0
    assert backend_defaults(str(tmp_path / "nothing")) == {}
    # the CLI takes the backend's defaults (D4M: strength 0.7, guidance 8) unless a flag says otherwise
    parser = build_parser()
    cfg = _config_from_args(parser.parse_args(["run", "--generator", str(sd_folder)]))
    assert (cfg.strength, cfg.guidance, cfg.steps) == (0.7, 8.0, 50)
    args = parser.parse_args(["run", "--generator", str(sd_folder), "--guidance", "3", "--dtype", "bfloat16"])
    assert (_config_from_args(args).guidance, _config_from_args(args).dtype) == (3.0, "bfloat16")
    with pytest.raises(ConfigError, match="prompt_template"):
        RunConfig(prompt_template="{label}").validate()


def test_missing_model_names_it():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ModelFileError, match="no-such-org/no-such-model"):
        load_generator("no-such-org/no-such-model")
    with pytest.raises(ModelFileError, match="not-a-folder"):
        load_generator("/tmp/not-a-folder/x")


def test_stable_diffusion_pipeline_and_export(sd_folder, detector_folder, rgb_folder, tmp_path):
    config = RunConfig(data=str(rgb_folder), generator=str(sd_folder), detector=str(detector_folder), ipc=2, k=2,
                       steps=2, guidance=8.0, tau=1.0, device="cpu", batch_size=3, real_sample=4,
                       prompt_template="a photo of a {name}", negative_prompt="blurry")
    pipe, meta = _run_and_export(tmp_path, config)
    gen = pipe.generator
    assert isinstance(gen, StableDiffusionGenerator) and gen.resolution == 32
    assert gen.prompts == ["a photo of a goldfish", "a photo of a tench"]  # classes in folder order
    assert set(meta["source"]) <= {"original", "refined"} and len(meta) >= 1
    # (prototype, seed, parameters) regenerates an image exactly, whatever else is in its batch
    row = pipe.store.synthetic(1)[0]
    proto = pipe.store.prototype_latent(row.prototype_id)
    kw = dict(strength=0.7, guidance=8.0, steps=2)
    alone = gen.generate(proto[None], [1], [row.seed], **kw)
    paired = gen.generate(torch.stack([proto, proto]), [0, 1], [7, row.seed], batch_size=2, **kw)
    assert torch.allclose(alone[0], paired[1], atol=1e-5)
    assert (alone[0] - load_png(pipe.store.path / row.file)).abs().max() <= 1 / 255 + 1e-6


def test_dit_pipeline_and_export(dit_folder, detector_folder, rgb_folder, tmp_path):
    config = RunConfig(data=str(rgb_folder), generator=str(dit_folder), detector=str(detector_folder), ipc=2, k=2,
                       steps=2, guidance=4.0, tau=1.0, device="cpu", batch_size=4, real_sample=4)
    pipe, _ = _run_and_export(tmp_path, config)
    assert isinstance(pipe.generator, DiTGenerator)
    assert pipe.generator.imagenet_ids == [1, 0]  # goldfish from the model's id2label, tench from ImageNette's table
    # a given map wins; an unmapped class is a clear error
    mapped = prepare_generator(pipe.generator, ["goldfish", "tench"], RunConfig(class_map={"goldfish": 5}))
    assert mapped.imagenet_ids == [5, 0] and pipe.generator.imagenet_ids == [1, 0]  # a copy; the run's is as it was
    with pytest.raises(ConfigError, match="zebra"):
        pipe.generator.configure(["tench", "zebra"])
    assert load_class_map("imagenette")["n03888257"] == 701
    # each image depends on its own seed only; init None samples from pure noise
    gen, kw = pipe.generator, dict(strength=0.7, guidance=4.0, steps=2)
    proto = pipe.store.prototype_latent(pipe.store.prototypes(0)[0].id)
    alone = gen.generate(proto[None], [0], [11], **kw)
    paired = gen.generate(torch.stack([proto, proto]), [1, 0], [5, 11], batch_size=2, **kw)
    assert torch.allclose(alone[0], paired[1], atol=1e-5)
    assert gen.generate(None, [1], [3], **kw).shape == (1, 3, 32, 32)


def test_detector_reload_and_pretrained_errors(detector_folder, tmp_path):
    det = Detector.load(detector_folder)
    assert det.arch == "resnet18" and det.input_size == 32 and det.mean != (0.5, 0.5, 0.5)
    assert det.inspect(torch.rand(2, 3, 32, 32)).probs.shape == (2, 2)
    with pytest.raises(ModelFileError, match="missing.st"):
        Detector.create("resnet18", ["a", "b"], None, 3, pretrained=True, pretrained_file=str(tmp_path / "missing.st"))
    with pytest.raises(ModelFileError, match="timm/resnet18"):  # not in the (offline) Hugging Face cache
        Detector.create("resnet18", ["a", "b"], None, 3, pretrained=True)


def test_pixel_folder_still_loads(tmp_path):
    from conftest import make_tiny_generator

    make_tiny_generator(["a", "b"]).save_pretrained(tmp_path / "gen")
    assert detect_backend(tmp_path / "gen") == "pixel"
    assert isinstance(load_generator(str(tmp_path / "gen")), PixelDiffusion)


def test_half_precision_plumbing(sd_folder, dit_folder):
    """bfloat16 weights (what float16 does on CUDA): inputs are cast in, images come back float32 in [0, 1]."""
    from curator.models.backends import load_generator as load_backend

    images = torch.rand(2, 3, 24, 24)
    for folder in (sd_folder, dit_folder):
        gen = load_backend(str(folder), "cpu", ["tench", "goldfish"], dtype="bfloat16")
        assert gen.dtype == torch.bfloat16
        latents = gen.encode(images)
        assert latents.dtype == torch.float32 and latents.shape == (2, 4, 16, 16)
        out = gen.generate(latents, [0, 1], [1, 2], strength=0.7, guidance=2.0, steps=2)
        assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_the_app_runs_a_stable_diffusion_folder(sd_folder, detector_folder, rgb_folder, tmp_path):
    """The app selects a backend by folder path alone: start a run on the tiny SD model and run a class."""
    from curator.ui.callbacks import DATA_SOURCES, MODEL_SOURCES, Callbacks
    from curator.ui.resources import AppSettings

    cb = Callbacks(AppSettings(runs_dir=tmp_path / "runs"))
    out = cb.start_run(DATA_SOURCES[1], str(rgb_folder), None, MODEL_SOURCES[1], str(sd_folder),
                       str(detector_folder), 1, 2, 1.0, 0.5, 2, 0.7, 8.0, 0, None)
    assert out[0].startswith("✔"), out[0]
    state = out[1]
    panel = cb.run_class(state, 0, progress=None)
    assert panel[0].startswith("✔"), panel[0]
    store = RunStore.open(state["run"])
    (row,) = store.synthetic(0)
    assert load_png(store.path / row.file).shape == (3, 32, 32)
    assert all(len(store.candidates(a.id)) == 2 for a in store.anomalies(0))


def test_the_app_form_shows_and_stores_what_runs_for_stable_diffusion(sd_folder, detector_folder, rgb_folder, tmp_path):
    """Choosing a Stable Diffusion folder fills the form with the backend's defaults (from the library's
    resolver); a value then typed, even one equal to RunConfig's default (guidance 1.0), is stored as typed."""
    from curator.models.loading import resolve_config
    from curator.ui.callbacks import DATA_SOURCES, MODEL_SOURCES, Callbacks
    from curator.ui.resources import AppSettings

    cb = Callbacks(AppSettings(runs_dir=tmp_path / "runs"))
    msg, steps, strength, guidance = cb.model_defaults(MODEL_SOURCES[1], str(sd_folder))
    resolved = resolve_config(str(sd_folder))
    assert (steps, strength, guidance) == (resolved.steps, resolved.strength, resolved.guidance)
    assert guidance == 8.0 and guidance != RunConfig().guidance and "guidance 8.0" in msg
    typed = dict(steps=RunConfig().steps, strength=RunConfig().strength, guidance=RunConfig().guidance)
    out = cb.start_run(DATA_SOURCES[1], str(rgb_folder), None, MODEL_SOURCES[1], str(sd_folder),
                       str(detector_folder), 1, 2, 1.0, 0.5, typed["steps"], typed["strength"], typed["guidance"], 0,
                       None)  # fmt: skip
    assert out[0].startswith("✔"), out[0]
    cfg = RunStore.open(out[1]["run"]).config
    assert (cfg.steps, cfg.strength, cfg.guidance) == (typed["steps"], typed["strength"], typed["guidance"])

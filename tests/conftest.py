"""Shared fixtures: tiny SD models and tiny image sets, built in seconds, no network."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))
# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models run fastest on one thread, and 2-core CI machines thrash with more.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("INSTANT_LORA_CACHE", str(tmp_path_factory.getbasetemp() / "il-cache"))
    monkeypatch.delenv("INSTANT_LORA_WEBUI_DIR", raising=False)


def make_image(path: Path, color=(200, 40, 40), size=(64, 64), shape="square"):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (240, 240, 240))
    d = ImageDraw.Draw(img)
    w, h = size
    if shape == "square":
        d.rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=color)
    else:
        d.ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def train_set(tmp_path):
    """lora_train_set/10_test/fashion_00N.png + .txt, like the reference trainer's layout."""
    root = tmp_path / "lora_train_set"
    make_image(root / "10_test" / "fashion_001.png", (200, 30, 30), shape="square")
    (root / "10_test" / "fashion_001.txt").write_text("test, red square dress", encoding="utf-8")
    make_image(root / "10_test" / "fashion_002.png", (30, 30, 200), shape="circle")
    (root / "10_test" / "fashion_002.txt").write_text("test, blue round dress", encoding="utf-8")
    return root


@pytest.fixture
def host(tmp_path):
    """A standalone host with one (empty) checkpoint file: nothing here loads it."""
    from instant_lora.host.standalone import StandaloneHost

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base.safetensors").write_bytes(b"")
    return StandaloneHost(models_dir=tmp_path / "models", lora_dir=tmp_path / "loras", data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD model saved as a diffusers folder (built in this environment's libraries)."""
    from instant_lora.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd") / "tiny", seed=0)


def tiny_config(train_set, out, **overrides):
    """A TrainConfig for the tiny model at 64 px; overrides are TrainConfig fields."""
    from instant_lora.config import TrainConfig

    values = dict(pretrained_model_name_or_path="unused", train_data_dir=str(train_set), output_dir=str(out),
                  resolution="64,64", network_dim=4, network_alpha=4.0, learning_rate=1e-3, max_train_steps=4,
                  seed=1234, cache_latents=True, output_name="tiny_lora")
    values.update(overrides)
    return TrainConfig(**values)

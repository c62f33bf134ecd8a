"""`standalone_app.py selftest`: prove an install works end to end in about a minute on a CPU.

Builds a tiny random SD model and two images, trains a few steps, saves the kohya file, loads it
back the way the WebUI does (W += up @ down * alpha / rank) and checks that the output changed
and matches the trained model. Then, for tiny SD2.x (v-prediction) and SDXL models, generates an
image, merges a LoRA into it (SDXL: both text encoders) and takes it out exactly. Prints PASS or
FAIL with the reason.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path


def _make_images(folder: Path) -> None:
    from PIL import Image, ImageDraw

    for i, color in enumerate([(200, 40, 40), (40, 40, 200)]):
        img = Image.new("RGB", (64, 64), (235, 235, 235))
        ImageDraw.Draw(img).ellipse([12, 12, 52, 52], fill=color)
        img.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"selftest, {'red' if i == 0 else 'blue'} circle", encoding="utf-8")


def _unet_output(model, prompt: str):
    import torch

    from .cache import encode_text, tokenize

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = encode_text(model.text_encoder.float(), tokenize(model.tokenizer, [prompt]))
        return model.unet.float()(x, torch.tensor([500]), hidden).sample


def _family_checks(checks: list) -> None:
    """SD2.x v-prediction and SDXL: an image from the generation loop; a LoRA (random, nonzero)
    merged the way the WebUI loads it gives the image of the live LoRA layers, and goes out exactly."""
    import torch

    from .lora.kohya_file import extract_state_dict
    from .lora.layers import inject_lora, lora_layers
    from .lora.targets import text_encoder_targets, unet_targets
    from .sample.apply import LoraMerger
    from .sample.generate import generate_tensor, place_model
    from .sample.settings import GenerationSettings
    from .tiny import build_tiny_sd2, build_tiny_sdxl

    settings = GenerationSettings(steps=2, width=64, height=64, cfg_scale=5.0, sampler="DDIM").checked()
    prompt = "selftest, red circle"
    for label, build in (("SD2.x v-prediction", build_tiny_sd2), ("SDXL", build_tiny_sdxl)):
        trained = build(0)
        gen = torch.Generator().manual_seed(1)
        for i, net in enumerate([trained.unet, *trained.text_encoders]):
            names = unet_targets(net) if i == 0 else text_encoder_targets(net)
            inject_lora(net, names, rank=4, alpha=2.0, seed=1, seed_salt=str(i))
            with torch.no_grad():
                for _, layer in lora_layers(net):
                    up = layer.lora_B["default"].weight
                    up.copy_(torch.randn(up.shape, generator=gen) * 0.3)
        encoders = trained.text_encoders if len(trained.text_encoders) > 1 else trained.text_encoder
        sd = extract_state_dict(trained.unet, encoders)
        live = generate_tensor(place_model(trained), prompt, 0, settings)
        model = place_model(build(0))
        base = generate_tensor(model, prompt, 0, settings)
        merger = LoraMerger(model.unet, model.text_encoders if len(model.text_encoders) > 1 else model.text_encoder)
        merger.apply(sd, 1.0, source=label)
        merged = generate_tensor(model, prompt, 0, settings)
        merger.restore()
        again = generate_tensor(model, prompt, 0, settings)
        checks.append((f"{label}: generates an image", bool(torch.isfinite(base).all()) and tuple(base.shape) == (64, 64, 3)))
        changed = float((merged - base).abs().max()) > 1e-2
        checks.append((f"{label}: a merged LoRA changes it as its live layers do",
                       changed and bool(torch.allclose(merged, live, atol=1e-2))))
        checks.append((f"{label}: taking the LoRA out gives the base image back", bool(torch.equal(base, again))))


def run_selftest(verbose: bool = True) -> bool:
    import torch

    from .config import TrainConfig
    from .lora.kohya_file import read_lora_file
    from .sample.apply import merge_lora
    from .tiny import build_tiny_sd
    from .train.events import ConsoleSink
    from .train.loop import train

    say = print if verbose else (lambda *a, **k: None)
    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    checks = []
    try:
        say(f"Instant LoRA selftest: torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = tmp / "data" / "5_selftest"
            data.mkdir(parents=True)
            _make_images(data)
            config = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(data.parent), output_dir=str(tmp / "out"),
                                 resolution="64,64", network_dim=4, network_alpha=4.0, learning_rate=1e-2, max_train_steps=8,
                                 seed=0, cache_latents=True, output_name="selftest", mixed_precision="no")
            model = build_tiny_sd(0)
            result = train(config, model=model, sinks=[ConsoleSink()] if verbose else [])
            checks.append(("training ran and saved a file", result.path is not None and result.path.is_file()))
            checks.append(("losses are finite", all(x == x and abs(x) < 1e6 for x in result.losses)))
            sd, metadata = read_lora_file(result.path)
            checks.append(("kohya keys with alpha", any(k.endswith(".alpha") for k in sd) and all(k.startswith("lora_") for k in sd)))
            checks.append(("WebUI metadata", metadata.get("ss_base_model_version") == "sd_v1" and "sshs_model_hash" in metadata))
            checks.append(("sidecar written", result.path.with_suffix(".json").is_file()))
            trained = _unet_output(model, "selftest, red circle")
            fresh = build_tiny_sd(0)
            base = _unet_output(fresh, "selftest, red circle")
            merge_lora(sd, fresh.unet, fresh.text_encoder)
            merged = _unet_output(fresh, "selftest, red circle")
            changed = float((merged - base).abs().max()) > 1e-4 * float(base.abs().max())
            checks.append(("the loaded LoRA changes the output", changed))
            checks.append(("the loaded LoRA reproduces the trained model", bool(torch.allclose(merged, trained, atol=1e-4, rtol=1e-3))))
        _family_checks(checks)
    except Exception:
        traceback.print_exc()
        checks.append(("no exception", False))
    finally:
        torch.set_num_threads(threads)
    ok = all(passed for _, passed in checks)
    for name, passed in checks:
        say(f"  [{'ok' if passed else 'FAIL'}] {name}")
    print(f"{'PASS' if ok else 'FAIL'} ({time.time() - t0:.1f}s)")
    return ok

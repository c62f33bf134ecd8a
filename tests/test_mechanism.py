"""The live view of the mechanism: every image's timestep and plain loss in each Step, how far each
block's LoRA has moved (zero before the first step, the saved file's numbers at the last), the
same numbers in the JSONL log (read back by the app's multi-process path) and in TensorBoard; the
Train section's scatter and bars, and the result card's summary."""

import io
import json
import math
import re

import pytest
import torch
from conftest import tiny_config
from test_ui import SteppingJob

from instant_lora.jobs import POINTS, JobSnapshot, TrainingJob, file_size
from instant_lora.lora import movement
from instant_lora.lora.blocks import block_of, block_order
from instant_lora.lora.kohya_file import read_lora_file
from instant_lora.tiny import TINY_UNET, build_tiny_sd
from instant_lora.train.events import ConsoleSink, Movement, Step, TensorBoardSink, loss_by_timestep
from instant_lora.train.launch import event_of
from instant_lora.train.loop import movement_every, train
from instant_lora.ui.handlers import progress

LAYERS = TINY_UNET["layers_per_block"]


def brute_force(sd: dict, layers_per_block: int) -> dict:
    """Per block: sqrt(sum of ||up @ down * alpha / rank||_F^2), the product formed, in float64."""
    squares = {}
    for key, down in sd.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = sd[name + ".lora_up.weight"].double()
        rank = down.shape[0]
        delta = up.reshape(up.shape[0], -1) @ down.double().reshape(rank, -1) * float(sd[name + ".alpha"]) / rank
        block = block_of(name, layers_per_block)
        squares[block] = squares.get(block, 0.0) + float((delta ** 2).sum())
    return {b: math.sqrt(v) for b, v in squares.items()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Six steps at batch 2 x accumulation 2, every event kept, alpha != rank."""
    from conftest import make_image

    root = tmp_path_factory.mktemp("mechanism")
    data = root / "data"
    for i, (color, shape) in enumerate([((200, 30, 30), "square"), ((30, 30, 200), "circle")]):
        make_image(data / "10_test" / f"img{i}.png", color, shape=shape)
        (data / "10_test" / f"img{i}.txt").write_text(f"test, thing {i}", encoding="utf-8")
    events = []
    result = train(tiny_config(data, root / "out", max_train_steps=6, train_batch_size=2, gradient_accumulation_steps=2,
                               network_dim=4, network_alpha=2.0, learning_rate=1e-2),
                   model=build_tiny_sd(0), sinks=[events.append])
    log = next((root / "out" / "logs").glob("*.jsonl"))
    return {"result": result, "events": events, "records": [json.loads(line) for line in log.read_text().splitlines()]}


# ---- the trainer's events ---------------------------------------------------------------------------

def test_movement_is_zero_before_the_first_step_and_the_files_at_the_last(tiny_run):
    moves = [e for e in tiny_run["events"] if isinstance(e, Movement)]
    assert movement_every(6) == 1 and [m.step for m in moves] == [0, 1, 2, 3, 4, 5, 6]
    first, last = moves[0].blocks, moves[-1].blocks
    assert list(first) == sorted(first, key=block_order) == ["IN01", "MID", "OUT02", "OUT03", "TE"]
    assert all(v == 0.0 for v in first.values())  # up starts at zero: the LoRA adds nothing yet
    assert all(v > 0 for m in moves[1:] for v in m.blocks.values())
    assert all(moves[i + 1].blocks != moves[i].blocks for i in range(1, len(moves) - 1))

    path = tiny_run["result"].path
    from_file = movement.from_file(path, LAYERS)
    sd, _ = read_lora_file(path)
    direct = brute_force(sd, LAYERS)
    assert from_file.keys() == last.keys() == direct.keys()
    for block in last:
        assert last[block] == pytest.approx(from_file[block], rel=1e-4), block
        assert from_file[block] == pytest.approx(direct[block], rel=1e-4), block


def test_every_step_carries_each_images_timestep_and_plain_loss(tiny_run):
    steps = [e for e in tiny_run["events"] if isinstance(e, Step)]
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        assert len(s.timesteps) == len(s.sample_losses) == 2 * 2  # batch size x accumulation
        assert all(isinstance(t, int) and 0 <= t <= 999 for t in s.timesteps)
        assert all(isinstance(x, float) and math.isfinite(x) and x >= 0 for x in s.sample_losses)
        # no prior or Min-SNR weighting here: the step's loss is the mean of its images' losses
        assert s.loss == pytest.approx(sum(s.sample_losses) / len(s.sample_losses), rel=1e-5)
        assert s.text_encoder_lr == pytest.approx(1e-2)  # the text encoder trains, at the run's lr
    assert len({t for s in steps for t in s.timesteps}) > 4  # drawn, not fixed


def test_the_jsonl_log_holds_them_and_the_app_reads_them_back(tiny_run):
    records = tiny_run["records"]
    kept = [e for e in tiny_run["events"] if isinstance(e, (Step, Movement))]
    read = [event_of(r) for r in records if r["event"] in ("step", "movement")]
    assert [type(e) for e in read] == [type(e) for e in kept]
    for mine, back in zip(kept, read):
        if isinstance(mine, Step):
            assert back.timesteps == mine.timesteps and back.sample_losses == pytest.approx(mine.sample_losses)
            assert back.text_encoder_lr == pytest.approx(mine.text_encoder_lr)
        else:
            assert back.step == mine.step and back.blocks == pytest.approx(mine.blocks)
    # a NaN is written as null and read back as NaN; records written before these fields still read
    nan = {"event": "movement", "step": 3, "blocks": {"IN01": None, "TE": 0.5}}
    assert math.isnan(event_of(nan).blocks["IN01"]) and event_of(nan).blocks["TE"] == 0.5
    old = {"event": "step", "step": 1, "total": 2, "epoch": 1, "loss": 0.1, "avg_loss": 0.1, "lr": 1e-4, "seconds": 1.0}
    assert event_of(old).timesteps == [] and event_of(old).text_encoder_lr is None


def test_a_nan_loss_of_one_image_keeps_the_log_valid_json(tmp_path):
    from instant_lora.train.events import JsonlSink

    sink = JsonlSink(tmp_path / "log.jsonl")
    sink(Step(step=1, total=1, epoch=1, loss=float("nan"), avg_loss=0.1, lr=1e-4, seconds=1.0, timesteps=[5, 900],
              sample_losses=[float("nan"), 0.2]))
    sink(Movement(step=1, blocks={"IN01": float("inf"), "TE": 0.1}))
    sink.close()
    step, move = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]  # strict JSON
    assert step["sample_losses"] == [None, 0.2] and move["blocks"] == {"IN01": None, "TE": 0.1}
    back = event_of(step)
    assert math.isnan(back.sample_losses[0]) and back.sample_losses[1] == 0.2


def test_a_run_started_from_a_file_reports_that_files_movement_first(tiny_run, train_set, tmp_path):
    events = []
    train(tiny_config(train_set, tmp_path, max_train_steps=1, learning_rate=0.0, network_dim=4, network_alpha=2.0,
                      network_weights=str(tiny_run["result"].path)), model=build_tiny_sd(0), sinks=[events.append])
    first = next(e for e in events if isinstance(e, Movement))
    assert first.step == 0
    assert first.blocks == pytest.approx(movement.from_file(tiny_run["result"].path, LAYERS), rel=1e-4)


def test_movement_counts_conv_weights_and_a_missing_alpha():
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 8, 1, 1, generator=g), torch.randn(16, 4, 1, 1, generator=g)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    sd = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    direct = float(torch.linalg.matrix_norm(up[:, :, 0, 0] @ down[:, :, 0, 0]))  # alpha = rank: scale 1
    assert movement.from_state_dict(sd, 2) == {"IN01": pytest.approx(direct, rel=1e-5)}
    sd[f"{name}.alpha"] = torch.tensor(1.0)
    assert movement.from_state_dict(sd, 2)["IN01"] == pytest.approx(direct / 4, rel=1e-5)
    assert movement.largest({"IN01": 1.0, "OUT03": 3.0, "TE": 2.0, "MID": 0.0, "OUT04": float("nan")}) == ["OUT03", "TE", "IN01"]


# ---- TensorBoard and the console ---------------------------------------------------------------------

class FakeWriter:
    made = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars = log_dir, []
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        pass


def test_tensorboard_gets_movement_timesteps_and_loss_by_timestep(tmp_path):
    FakeWriter.made = []
    sink = TensorBoardSink(tmp_path / "tb", writer_class=FakeWriter)
    sink(Movement(step=0, blocks={"IN01": 0.0, "TE": 0.0}))
    assert not FakeWriter.made  # no event file for a run that has not trained a step
    sink(Step(step=1, total=2, epoch=1, loss=0.3, avg_loss=0.3, lr=1e-4, seconds=1.0, timesteps=[10, 50, 950],
              sample_losses=[0.9, 0.5, 0.1], text_encoder_lr=5e-5))
    sink(Movement(step=1, blocks={"IN01": 0.25, "TE": 0.5}))
    sink.close()
    got = {(tag, step): value for tag, value, step in FakeWriter.made[0].scalars}
    assert got[("movement/IN01", 0)] == 0.0 and got[("movement/TE", 1)] == 0.5 and got[("movement/IN01", 1)] == 0.25
    assert got[("timestep/mean", 1)] == pytest.approx(1010 / 3)
    assert got[("loss_by_timestep/000-099", 1)] == pytest.approx(0.7) and got[("loss_by_timestep/900-999", 1)] == 0.1
    assert got[("lr/text_encoder", 1)] == 5e-5 and got[("lr/unet", 1)] == 1e-4
    assert loss_by_timestep([5, 7], [float("nan"), 0.4]) == {"000-099": 0.4}


def test_tensorboard_writes_a_real_event_file_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    sink = TensorBoardSink(tmp_path / "tb")
    sink(Movement(step=0, blocks={"IN01": 0.0}))
    sink(Step(step=1, total=1, epoch=1, loss=0.3, avg_loss=0.3, lr=1e-4, seconds=1.0, timesteps=[10], sample_losses=[0.3]))
    sink(Movement(step=1, blocks={"IN01": 0.2}))
    sink.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_the_console_ignores_movement_quietly():
    stream = io.StringIO()
    ConsoleSink(stream)(Movement(step=0, blocks={"IN01": 0.0}))
    assert stream.getvalue() == ""


# ---- the job and the page -----------------------------------------------------------------------------

def step_event(n, timesteps, losses):
    return Step(step=n, total=10, epoch=1, loss=sum(losses) / len(losses), avg_loss=0.5, lr=1e-4, seconds=float(n),
                timesteps=timesteps, sample_losses=losses)


def test_the_job_keeps_the_runs_points_and_latest_movement():
    job = TrainingJob()
    job._on_event(Movement(step=0, blocks={"IN01": 0.0, "TE": 0.0}))
    v0 = job.version
    job._on_event(step_event(1, [10, 900], [0.8, float("nan")]))
    assert job.version > v0
    job._on_event(Movement(step=1, blocks={"IN01": 0.3, "TE": 0.1}))
    snap = job.snapshot()
    assert snap.points == [(1, 10, 0.8), (1, 900, None)] and snap.movement == {"IN01": 0.3, "TE": 0.1}
    assert snap.movement_step == 1 and snap.version == job.version
    for n in range(2, 2 + POINTS):
        job._on_event(step_event(n, [n % 1000], [0.1]))
    snap = job.snapshot()
    assert len(snap.points) == POINTS and snap.points[-1][0] == 1 + POINTS  # the last POINTS images


def test_file_size(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"x" * 10)
    assert file_size(tmp_path / "f.bin") == 10
    assert file_size(tmp_path) is None and file_size("") is None and file_size(tmp_path / "missing") is None


def snap_with_points(**extra):
    points = [(s, (s * 137) % 1000, 0.05 + ((s * 37) % 10) / 20) for s in range(1, 41)] + [(41, 12, 0.9), (41, 700, 0.05)]
    return JobSnapshot(state="running", name="cat", step=41, total=50, lr=2e-4, points=points,
                       movement={"IN01": 0.02, "MID": 0.0, "OUT02": 0.08, "OUT03": 0.05, "TE": 0.01}, movement_step=40,
                       **extra)


def test_mechanism_html_draws_the_points_the_current_step_and_the_bars():
    html = progress.mechanism_html(snap_with_points())
    assert "data-points='42'" in html and "data-blocks='IN01,MID,OUT02,OUT03,TE'" in html
    assert "data-current='2'" in html and html.count("class='il-now'") == 2  # step 41's two images
    assert html.count("h0") == 42  # one dot per image
    assert "Step 41: 2 images at timesteps 12, 700, mean loss 0.4750, learning rate 2.00e-04" in html
    bars = dict(re.findall(r"data-block='(\w+)' data-value='([^']+)'", html))
    assert bars == {"IN01": "0.02", "MID": "0", "OUT02": "0.08", "OUT03": "0.05", "TE": "0.01"}
    widths = dict(re.findall(r"data-block='(\w+)' data-value='[^']+' x='\d+' y='[\d.]+' width='([\d.]+)'", html))
    assert float(widths["OUT02"]) > float(widths["OUT03"]) > float(widths["IN01"]) > 0 == float(widths["MID"])
    assert "at step 40" in html and "that is normal, not a problem" in html and "learning your subject" in html
    one = progress.mechanism_html(JobSnapshot(step=1, lr=1e-4, points=[(1, 500, 0.2)], text_encoder_lr=5e-5))
    assert "Step 1: timestep 500, loss 0.2000, learning rate 1.00e-04; text encoder 5.00e-05" in one
    empty = progress.mechanism_html(JobSnapshot())
    assert "data-points='0'" in empty and "<svg" not in empty
    zero = progress.mechanism_html(JobSnapshot(movement={"IN01": 0.0}, movement_step=0))
    assert "All zero before the first step" in zero


def test_mechanism_is_sent_only_when_new_points_or_movement_arrived():
    job = SteppingJob()
    values, seen = progress.poll(job, None)
    assert "mechanism" in values and "data-points='0'" in values["mechanism"]
    job.snap.log, job.snap.version = ["a line"], 2
    values, seen = progress.poll(job, seen)
    assert "mechanism" not in values
    job.snap.points, job.snap.step, job.snap.version = [(1, 300, 0.2)], 1, 3
    values, seen = progress.poll(job, seen)
    assert "data-points='1'" in values["mechanism"]
    job.snap.movement, job.snap.movement_step, job.snap.version = {"IN01": 0.1}, 1, 4
    values, seen = progress.poll(job, seen)
    assert "data-blocks='IN01'" in values["mechanism"]


def test_the_result_card_names_the_blocks_that_changed_most_and_the_size_ratio(tmp_path):
    lora = tmp_path / "cat.safetensors"
    lora.write_bytes(b"x" * (3 * 2**20))
    snap = snap_with_points(result_path=str(lora), base_model_bytes=2 * 2**30, result_bytes=3 * 2**20)
    snap.state = "finished"
    md, tag = progress.result_markdown(snap)
    assert md.startswith("Saved: ") and tag.startswith("<lora:cat:")
    assert "Changed most: OUT02, OUT03, IN01" in md
    assert "File 3.0 MB = 0.146% of the base model's 2.00 GB" in md
    snap.state, snap.stage, snap.base_model_bytes, snap.result_bytes = "cancelled", "training", None, None
    md, _ = progress.result_markdown(snap)  # the size read from the file; the base model's unknown
    assert md.startswith("**Cancelled** while training") and "File 3.0 MB" in md and "base model" not in md
    snap.movement = {}
    assert "Changed most" not in progress.result_markdown(snap)[0]

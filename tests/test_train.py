"""deaot_core.losses and deaot_core.train: loss values on hand-made cases, schedules, a short
training that learns, checkpoints that reload strictly, resuming, and fine-tuning from a tiny
FiftyOne dataset (private mongod from conftest.py)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deaot_core
from deaot_core.losses import (
    VOSLoss, bootstrapped_cross_entropy, frame_iou, soft_jaccard_loss, top_k_fraction,
)
from deaot_core.data.synthetic import ClipOptions, generate_clip
from deaot_core.data.augment import random_scale_crop, shuffle_ids
from deaot_core.data.batches import clips_to_batch
from deaot_core.train import (
    EMA, TrainConfig, Trainer, build_source, calibrate_frozen_batchnorm, clip_options, config_from_args,
    learning_rate, main, parameter_groups, resolve_stage, set_learning_rates,
)

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("torch_threads")


def _onehot_logits(labels: torch.Tensor, channels: int = 11, scale: float = 50.0) -> torch.Tensor:
    return F.one_hot(labels.long(), channels).permute(0, 3, 1, 2).float() * scale


# ------------------------------------------------------------------------------------- losses
def test_perfect_prediction_has_near_zero_loss():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 2:5, 2:5] = 1
    labels[0, 5:, 5:] = 2
    labels[1, :4] = 1
    logits = _onehot_logits(labels)
    counts = [2, 1]
    assert bootstrapped_cross_entropy(logits, labels, counts, 0.15).max() < 1e-6
    assert soft_jaccard_loss(logits, labels, counts).max() < 1e-6
    loss, stats = VOSLoss()([logits], labels[:, None], counts)
    assert loss.item() < 1e-6 and stats["iou"] == pytest.approx(1.0)


def test_bootstrapping_averages_the_hardest_pixels():
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    logits = _onehot_logits(labels, 2, scale=4.0)
    wrong = [(0, 0), (3, 7), (9, 9)]
    for y, x in wrong:  # confidently wrong pixels: the 3 hardest of 100
        logits[0, :, y, x] = torch.tensor([-3.0, 3.0])
    pixel = F.cross_entropy(logits, labels, reduction="none")[0]
    hard = torch.stack([pixel[y, x] for y, x in wrong])
    assert bootstrapped_cross_entropy(logits, labels, [1], 0.03).item() == pytest.approx(hard.mean().item(), rel=1e-6)
    # 5 % of the pixels: the 3 hard ones plus 2 of the easy ones
    easy = pixel.flatten().sort(descending=True).values[3:5]
    expected = (hard.sum() + easy.sum()) / 5
    assert bootstrapped_cross_entropy(logits, labels, [1], 0.05).item() == pytest.approx(expected.item(), rel=1e-6)
    assert bootstrapped_cross_entropy(logits, labels, [1], 1.0).item() == pytest.approx(pixel.mean().item(), rel=1e-6)


def test_top_k_fraction_anneals_like_the_official_schedule():
    assert top_k_fraction(0, 0.15, 100) == 1.0
    assert top_k_fraction(50, 0.15, 100) == pytest.approx(0.575)
    assert top_k_fraction(100, 0.15, 100) == pytest.approx(0.15)
    assert top_k_fraction(10 ** 6, 0.15, 100) == pytest.approx(0.15)
    assert top_k_fraction(0, 0.15, 0) == 0.15
    assert top_k_fraction(5, None, 100) == 1.0


def test_loss_only_sees_the_ids_in_use():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :3] = 1
    logits = _onehot_logits(labels, 11, scale=3.0)
    base = VOSLoss().frame_loss(logits, labels, [1])[0]
    logits[0, 5:] = 1e4  # unused identities (the model masks them with -1e10 anyway)
    again = VOSLoss().frame_loss(logits, labels, [1])[0]
    assert torch.allclose(base, again)
    with pytest.raises(ValueError, match="above its object count"):
        soft_jaccard_loss(logits, labels + 1, [1])


def test_soft_jaccard_by_hand_skips_absent_ids_and_ignores_255():
    labels = torch.tensor([[[0, 0, 1, 255]]])  # (1, 1, 4); object 2 is absent
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]))
    logits = logits.T.reshape(1, 3, 1, 4)
    p = torch.softmax(logits[0, :, 0, :3], dim=0)  # pixel 3 ignored
    g0, g1 = torch.tensor([1.0, 1, 0]), torch.tensor([0.0, 0, 1])
    j0 = 1 - (p[0] * g0).sum() / (p[0].sum() + g0.sum() - (p[0] * g0).sum())
    j1 = 1 - (p[1] * g1).sum() / (p[1].sum() + g1.sum() - (p[1] * g1).sum())
    got = soft_jaccard_loss(logits, labels, [2])
    assert got.item() == pytest.approx(((j0 + j1) / 2).item(), rel=1e-5)
    # the ignored pixel has zero cross-entropy but still counts in the pixel total
    ce = bootstrapped_cross_entropy(logits, labels, [2], 1.0)
    manual = F.cross_entropy(logits[0, :, 0, :3].T, labels[0, 0, :3], reduction="sum") / 4
    assert ce.item() == pytest.approx(manual.item(), rel=1e-6)


def test_frame_iou():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2] = 1
    pred = torch.zeros_like(labels)
    pred[0, :1] = 1
    assert frame_iou(_onehot_logits(pred), labels, [1]).item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------- schedules
def test_learning_rate_schedule():
    assert learning_rate(0.0, 2e-4, 2e-5) == pytest.approx(2e-5)
    assert learning_rate(0.05, 2e-4, 2e-5) == pytest.approx(2e-4)
    assert learning_rate(1.0, 2e-4, 2e-5) == pytest.approx(2e-5)
    mid = learning_rate(0.525, 2e-4, 2e-5)
    assert mid == pytest.approx(2e-5 + 1.8e-4 * 0.5 ** 0.9)
    values = [learning_rate(p / 100, 2e-4, 2e-5) for p in range(5, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_parameter_groups_and_learning_rates():
    model = deaot_core.build_model("DeAOTT")
    opt = torch.optim.AdamW(parameter_groups(model, 0.07), lr=1.0)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["encoder_projector.bias"]["weight_decay"] == 0.0
    assert by_name["encoder_projector.weight"]["weight_decay"] == 0.07
    set_learning_rates(opt, 1e-4, 1e-5, 0.1, frozen_keys=("patch_wise_id_bank",))
    enc = next(g for n, g in by_name.items() if n.startswith("encoder."))
    assert enc["lr"] == pytest.approx((1e-4 - 1e-5) * 0.1 + 1e-5)
    assert by_name["encoder_projector.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["patch_wise_id_bank.weight"]["lr"] == 0 and by_name["patch_wise_id_bank.weight"]["weight_decay"] == 0


def test_calibration_keeps_encoder_activations_alive():
    torch.manual_seed(0)
    model = deaot_core.build_model("DeAOTT")
    clip = generate_clip(0, num_frames=2, height=65, width=65)
    frames, _, _ = clips_to_batch([clip])
    images = frames.flatten(0, 1)
    with torch.no_grad():
        before = model.encode_image(images)[2].std().item()
        assert calibrate_frozen_batchnorm(model, images) == 52
        after = model.encode_image(images)[2].std().item()
    assert before < 1e-3 < 0.1 < after < 10


def test_ema_tracks_and_applies():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.5, 2/11)
    with ema.applied(model):
        assert not torch.allclose(model.weight, torch.ones_like(model.weight))
    assert torch.allclose(model.weight, torch.ones_like(model.weight))


def test_random_scale_crop_shapes_and_objects():
    clip = generate_clip(1, num_frames=3, height=97, width=129)
    rng = np.random.default_rng(0)
    frames, labels = random_scale_crop(clip.frames, clip.labels, rng, 49, 65)
    assert frames.shape == (3, 49, 65, 3) and labels.shape == (3, 49, 65)
    assert labels[0].max() > 0
    frames, labels = random_scale_crop(clip.frames[:, :20, :20], clip.labels[:, :20, :20], rng, 65, 65,
                                       scale_range=(0.2, 0.2))  # smaller than the crop: padded
    assert frames.shape == (3, 65, 65, 3)


def test_shuffle_ids_moves_objects_to_distinct_slots():
    labels = np.array([[[0, 1, 2, 3, 255]], [[3, 3, 1, 0, 255]]], np.uint8)
    seen = set()
    for seed in range(20):
        out = shuffle_ids(labels, np.random.default_rng(seed), max_objects=10)
        slots = [int(out[0, 0, i]) for i in (1, 2, 3)]
        assert len(set(slots)) == 3 and all(1 <= v <= 10 for v in slots)
        assert out[0, 0, 0] == 0 and out[0, 0, 4] == 255
        assert out[1, 0, 0] == out[0, 0, 3] and out[1, 0, 2] == out[0, 0, 1]  # consistent over time
        seen.update(slots)
    assert len(seen) == 10


def test_loss_all_pixels_is_logged_alongside_the_bootstrapped_objective():
    labels = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    labels[0, 0, :5] = 1
    logits = torch.randn(1, 11, 10, 10)
    _, early = VOSLoss(hard_mining_steps=10)([logits], labels, [1], step=0)
    _, late = VOSLoss(hard_mining_steps=10)([logits], labels, [1], step=10)
    assert early["loss"] == pytest.approx(early["loss_all_pixels"], rel=1e-6)
    assert late["loss"] > late["loss_all_pixels"] == pytest.approx(early["loss_all_pixels"], rel=1e-6)


# ----------------------------------------------------------------------------------- training
def test_training_after_inference_in_the_same_process():
    """Propagating under ``torch.inference_mode`` (what the plugin does) fills the attention's
    index caches; training on the same sizes afterwards must still backpropagate (a cached index
    made in inference mode cannot be saved for backward)."""
    from deaot_core.modeling import attention

    attention._window_index.cache_clear()
    attention._tile_window_index.cache_clear()
    torch.manual_seed(0)
    clip = generate_clip(2, num_frames=3, height=65, width=65, num_objects=2, options=ClipOptions(max_distractors=0))
    frames, labels, counts = clips_to_batch([clip])
    model = deaot_core.build_model("DeAOTT")
    with torch.inference_mode():
        results = deaot_core.propagate_video(deaot_core.Tracker(model), clip.frames, {0: clip.labels[0]})
        assert len(list(results)) == 3
    assert attention._window_index.cache_info().currsize + attention._tile_window_index.cache_info().currsize > 0
    model.train()
    loss, _ = VOSLoss()(deaot_core.train_forward(model, frames, labels, counts), labels[:, 1:], counts)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_few_steps_on_a_tiny_clip_reduce_the_loss():
    torch.manual_seed(0)
    model = deaot_core.build_model("DeAOTT").train()
    clip = generate_clip(1, num_frames=3, height=65, width=65, num_objects=2, options=ClipOptions(max_distractors=0))
    frames, labels, counts = clips_to_batch([clip])
    calibrate_frozen_batchnorm(model, frames.flatten(0, 1))
    opt = torch.optim.AdamW(parameter_groups(model, 0.07), lr=1e-3)
    loss_fn = VOSLoss()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss, _ = loss_fn(deaot_core.train_forward(model, frames, labels, counts), labels[:, 1:], counts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses


def _tiny_config(out, **kw) -> TrainConfig:
    base = dict(model="DeAOTT", data="synthetic", out=str(out), seed=0, steps=4, batch_size=1, seq_len=3,
                height=65, width=65, log_every=1, progress_bar=False, ema_ratio=0.5)
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_writes_checkpoints_that_reload_strictly(tmp_path):
    summary = Trainer(_tiny_config(tmp_path, half=True, id_shuffle=1.0, export=str(tmp_path / "x" / "demo.pth"))).run()
    assert summary["steps"] == 4
    for name in ("final.pth", "last.pth", "x/demo.pth"):
        model = deaot_core.build_model("DeAOTT")
        deaot_core.load_checkpoint(model, tmp_path / name)  # strict
    final = torch.load(tmp_path / "final.pth", weights_only=True)
    assert final["state_dict"]["encoder_projector.weight"].dtype == torch.float16
    assert final["weights"] == "ema"
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["step"] == 4 and "optimizer" in last and last["ema"]["updates"] == 4
    assert last["state_dict"]["encoder_projector.weight"].dtype == torch.float32
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert len(log["records"]) == 4 and all(math.isfinite(r["loss"]) for r in log["records"])
    assert log["calibrated_bn_layers"] == 52 and log["summary"]["final_checkpoint"].endswith("final.pth")
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


def test_resumed_training_matches_an_uninterrupted_one(tmp_path):
    straight = Trainer(_tiny_config(tmp_path / "a")).run()
    first = Trainer(_tiny_config(tmp_path / "b"))
    assert first.run(until_step=2) is None
    resumed = Trainer(_tiny_config(tmp_path / "b"))
    assert resumed.step == 2 and resumed.resumed_from
    summary = resumed.run()
    assert summary["steps"] == straight["steps"] == 4
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_workers_give_the_serial_batches_and_weights(tmp_path):
    """Batches made ahead by worker processes are those of the serial run, step for step, also
    when the run starts at a later step (a resumed run), so the weights come out identical."""
    serial = Trainer(_tiny_config(tmp_path / "peek", workers=0))
    parallel = Trainer(_tiny_config(tmp_path / "peek", workers=2))
    assert (serial.workers, parallel.workers) == (0, 2)
    batches = parallel.batches(3)
    try:
        for step in (3, 4, 5):
            a, b = serial.batch(step), next(batches)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    finally:
        batches.close()
    # each run right after its trainer is made (both seed the global RNG, used by DropPath)
    Trainer(_tiny_config(tmp_path / "serial", workers=0)).run()
    Trainer(_tiny_config(tmp_path / "parallel", workers=2)).run()
    a = torch.load(tmp_path / "serial" / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "parallel" / "last.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="workers"):
        Trainer(_tiny_config(tmp_path / "bad", workers=-1))


def test_gpu_stage5_script_runs_end_to_end_on_the_cpu(tmp_path):
    """bench/gpu_train_stage5.sh is what a session with a lent GPU runs (its device time is
    scarce): with tiny values on the CPU it trains from the demo checkpoint with a data worker,
    exports, scores both checkpoints and leaves only the small files in OUT."""
    env = dict(os.environ, PY=sys.executable, DEVICE="cpu", MINUTES="0.02", SIZE="65x65", BATCH="1", SEQ="3",
               WORKERS="1", CLIPS="1", FRAMES="4", OUT=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_train_stage5.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "deaot_t_synthetic_stage5.pth", "loss_curve.png", "synthetic_jf_stage5.json", "train_log.json"]
    deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), out / "deaot_t_synthetic_stage5.pth")
    scored = json.loads((out / "synthetic_jf_stage5.json").read_text())["results"]
    assert {"checkpoint:deaot_core/weights/deaot_t_synthetic.pth", f"checkpoint:{out}/deaot_t_synthetic_stage5.pth"} \
        <= set(scored)
    assert done.stdout.count("J&F") == 3  # copy-first-mask, stage 4, stage 5


def test_cli_stop_at_step_then_continue_with_a_new_total(tmp_path, capsys):
    """``--stop-at-step`` saves ``last.pth`` and exits 0 without final weights; the same command
    with another ``--steps`` continues from there, its schedules following the new total."""
    args = ["--out", str(tmp_path), "--size", "65x65", "--batch-size", "1", "--seq-len", "3", "--log-every", "1",
            "--no-progress", "--ema-ratio", "0.5", "--seed", "0"]
    assert main(args + ["--steps", "6", "--stop-at-step", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["stopped_at_step"] == 2
    assert torch.load(tmp_path / "last.pth", weights_only=True)["step"] == 2
    assert not (tmp_path / "final.pth").exists()
    assert main(args + ["--steps", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4
    log = json.loads((tmp_path / "train_log.json").read_text())
    cfg = resolve_stage(_tiny_config(tmp_path))
    step3 = next(r for r in log["records"] if r["step"] == 3)
    assert step3["lr"] == pytest.approx(learning_rate(2 / 4, cfg.lr, cfg.min_lr, cfg.warmup, cfg.lr_power))
    deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), tmp_path / "final.pth")


def test_cli_arguments():
    cfg = config_from_args(["--out", "x", "--minutes", "45", "--size", "241x321", "--top-k", "0.2", "--half",
                            "--data", "fiftyone:ds:gt"])
    assert (cfg.height, cfg.width, cfg.top_k_percent, cfg.minutes, cfg.half) == (241, 321, 0.2, 45.0, True)
    assert cfg.data == "fiftyone:ds:gt" and cfg.steps is None
    with pytest.raises(SystemExit):
        config_from_args(["--out", "x"])  # neither --steps nor --minutes
    cfg = config_from_args(["--out", "x", "--steps", "1", "--clip-option", "camouflage_prob=1",
                            "--clip-option", "max_objects=2"])
    assert cfg.clip_options == {"camouflage_prob": 1.0, "max_objects": 2.0}
    options = clip_options(cfg.clip_options)
    assert options.camouflage_prob == 1.0 and options.max_objects == 2 and isinstance(options.max_objects, int)
    with pytest.raises(SystemExit):
        config_from_args(["--out", "x", "--steps", "1", "--clip-option", "camouflage_prob"])
    with pytest.raises(ValueError, match="takes a LOW,HIGH pair"):
        clip_options({"size_range": 0.5})
    with pytest.raises(ValueError, match="unknown synthetic clip option"):
        clip_options({"palette": 0.5})
    cfg = config_from_args(["--out", "x", "--steps", "1", "--clip-option", "size_range=0.03,0.2"])
    assert clip_options(cfg.clip_options).size_range == (0.03, 0.2)
    with pytest.raises(ValueError, match="takes one number"):
        clip_options({"camouflage_prob": (0.1, 0.2)})
    with pytest.raises(ValueError, match="0 < low <= high"):
        clip_options({"size_range": (0.3, 0.2)})
    with pytest.raises(ValueError, match="16k\\+1"):
        Trainer(_tiny_config("unused", height=64))
    with pytest.raises(ValueError, match="python -m deaot_vos train"):  # the core never reads FiftyOne
        build_source(_tiny_config("unused", data="fiftyone:ds:gt"))


# ------------------------------------------------------------------------------ FiftyOne data
@pytest.mark.usefixtures("fiftyone_db")
def test_fine_tune_from_a_tiny_fiftyone_dataset(tmp_path, make_video, tiny_checkpoint, capsys):
    import fiftyone as fo

    from deaot_vos.cli import main as deaot_vos_main
    from deaot_vos.formats.training_source import FiftyOneVOS, read_sequences

    name = "deaot-train-finetune"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    samples = []
    for v in range(2):
        path, maps = make_video(f"clip{v}", num_frames=8, objects=2)
        sample = fo.Sample(filepath=path)
        h, w = maps.shape[1:]
        for number in range(1, 9):
            m = maps[number - 1]
            sample.frames[number]["seg"] = fo.Segmentation(mask=m.astype(np.uint8))
            dets = []
            for k in (2, 1):  # listed out of order: ids follow ``index``
                region = m == k
                ys, xs = np.nonzero(region)
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                dets.append(fo.Detection(label="obj", index=k, mask=region[y0:y1, x0:x1],
                                         bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]))
            sample.frames[number]["gt"] = fo.Detections(detections=dets)
        samples.append(sample)
    dataset.add_samples(samples)

    for field in ("frames.seg", "gt"):
        sequences = read_sequences(name, field)
        assert len(sequences) == 2
        for seq in sequences:
            assert seq.frame_numbers == list(range(1, 9)) and seq.num_objects == 2
            # the parsed label maps are the ground truth, objects matched across frames
            assert {tuple(np.unique(l)) for l in seq.labels} == {(0, 1, 2)}
            agree = np.mean([(np.isin(l, (1, 2)) == (m > 0)).mean() for l, m in zip(seq.labels, maps)])
            assert agree == 1.0
    seg = read_sequences(name, "seg")
    np.testing.assert_array_equal(np.stack(seg[1].labels), maps)

    sequences = read_sequences(name, "gt")
    source = FiftyOneVOS(sequences, num_frames=3, height=49, width=65, seed=0)
    clip = source[0]
    assert clip.frames.shape == (3, 49, 65, 3) and clip.labels[0].max() >= 1
    np.testing.assert_array_equal(source[0].labels, clip.labels)  # deterministic

    # the FiftyOne side's command builds the source and runs the core trainer; a worker process decodes
    capsys.readouterr()  # FiftyOne's progress output so far
    assert deaot_vos_main(["train", "--data", f"fiftyone:{name}:gt", "--init", str(tiny_checkpoint), "--out",
                           str(tmp_path), "--steps", "2", "--size", "49x65", "--workers", "1", "--batch-size", "1",
                           "--seq-len", "3", "--log-every", "1", "--no-progress", "--ema-ratio", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["encoder_lr_ratio"] == 0.1 and log["calibrated_bn_layers"] == 0  # fine-tuning defaults
    deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), tmp_path / "final.pth")
    fo.delete_dataset(name)

"""DeAOT core: registry, checkpoint layouts, golden fidelity, shapes and the Tracker's behaviour."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import deaot_core
from deaot_core.modeling import attention
from deaot_core.modeling.encoders import build_encoder

from golden_cases import build_case_model, load_case, run_case

DATA = Path(__file__).parent / "data"
GOLDEN_CASES = sorted((DATA / "golden").glob("*.json"))
KEY_FILES = {p.stem: p for p in (DATA / "state_dict_keys").glob("*.json")}


@pytest.fixture(scope="module")
def deaott() -> deaot_core.VOSModel:
    torch.manual_seed(0)
    return deaot_core.build_model("DeAOTT")


def _reference_layout(name: str) -> dict:
    return json.loads(KEY_FILES[name].read_text())


def _random_state(layout: dict) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, shape, dtype in layout["state_dict"]:
        if dtype.startswith("int"):
            state[key] = torch.randint(0, 5, shape, generator=gen, dtype=getattr(torch, dtype))
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


# -- registry and checkpoints ---------------------------------------------------------------------

def test_registry_has_the_twelve_released_models():
    assert set(deaot_core.MODEL_NAMES) == set(KEY_FILES)
    assert len(deaot_core.MODEL_NAMES) == 12
    assert deaot_core.get_config("deaott").name == "DeAOTT"
    with pytest.raises(KeyError, match="known models"):
        deaot_core.get_config("DeAOTXL")


@pytest.mark.parametrize("name", deaot_core.MODEL_NAMES)
def test_official_layout_loads_strictly(name, tmp_path):
    layout = _reference_layout(name)
    model = deaot_core.build_model(name)
    assert not model.training
    state = model.state_dict()
    assert list(state) == [k for k, _, _ in layout["state_dict"]]
    for key, shape, dtype in layout["state_dict"]:
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype).replace("torch.", "") == dtype, key
    assert deaot_core.count_parameters(model) == layout["num_parameters"]

    official = _random_state(layout)
    path = tmp_path / f"{name}_PRE_YTB_DAV.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}}, path)
    deaot_core.load_checkpoint(model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, official[key].to(value.dtype)), key


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model", "module_prefix"])
def test_checkpoint_wrappers(wrapper, deaott, tmp_path):
    state = {k: v.clone() + 0.5 if v.is_floating_point() else v for k, v in deaott.state_dict().items()}
    payload = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
               "module_prefix": {f"module.{k}": v for k, v in state.items()}}[wrapper]
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    model = deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), path)
    assert torch.equal(model.state_dict()["decoder.conv_out.bias"], state["decoder.conv_out.bias"])


def test_checkpoint_of_another_variant_is_refused(deaott, tmp_path):
    path = tmp_path / "deaott.pth"
    deaot_core.save_checkpoint(deaott, path)
    with pytest.raises(deaot_core.CheckpointError, match="DeAOTS.*missing"):
        deaot_core.load_checkpoint(deaot_core.build_model("DeAOTS"), path)
    with pytest.raises(deaot_core.CheckpointError, match="AOTT"):
        deaot_core.load_checkpoint(deaot_core.build_model("AOTT"), path)


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path):
    # DeAOTB and SwinB_DeAOTL share propagation keys but not encoder / decoder shapes.
    layout = _reference_layout("DeAOTL")
    path = tmp_path / "deaotl.pth"
    torch.save(_random_state(layout), path)
    deaot_core.load_checkpoint(deaot_core.build_model("DeAOTB"), path)  # same layout: fine
    state = _random_state(layout)
    state["decoder.conv_out.weight"] = torch.zeros(12, 128, 1, 1)
    torch.save(state, path)
    with pytest.raises(deaot_core.CheckpointError, match=r"conv_out.weight is \(12, 128, 1, 1\), expected"):
        deaot_core.load_checkpoint(deaot_core.build_model("DeAOTL"), path)


def test_corrupt_and_unsafe_files_are_refused(deaott, tmp_path):
    good = tmp_path / "good.pth"
    deaot_core.save_checkpoint(deaott, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(deaot_core.CheckpointError, match="cannot read"):
        deaot_core.load_checkpoint(deaott, truncated)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(deaot_core.CheckpointError, match="does not hold a state dict"):
        deaot_core.load_checkpoint(deaott, not_a_state_dict)
    pickle_with_code = tmp_path / "object.pth"
    torch.save({"state_dict": deaott.state_dict(), "hook": deaot_core.ModelConfig}, pickle_with_code)
    with pytest.raises(deaot_core.CheckpointError, match="cannot read"):
        deaot_core.load_checkpoint(deaott, pickle_with_code)
    with pytest.raises(FileNotFoundError):
        deaot_core.load_checkpoint(deaott, tmp_path / "missing.pth")


def test_url_is_downloaded_once_with_checksum(deaott, tmp_path, monkeypatch):
    source = tmp_path / "src" / "DeAOTT_PRE_YTB_DAV.pth"
    deaot_core.save_checkpoint(deaott, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEAOT_CACHE", str(cache))
    url = source.as_uri()
    deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), url, sha256=digest)
    cached = deaot_core.hub.url_cache_path(url, digest, cache)
    assert cached.is_file() and cached.read_bytes() == source.read_bytes()
    source.unlink()  # a second load must come from the cache
    deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), url, sha256=digest)
    deaot_core.save_checkpoint(deaott, source)
    other_cache = tmp_path / "other-cache"
    with pytest.raises(deaot_core.CheckpointError, match="checksum mismatch"):
        deaot_core.download(url, sha256="0" * 64, directory=other_cache)
    assert not any(other_cache.iterdir())  # nothing half-downloaded is left behind


def test_half_precision_checkpoint_round_trip(deaott, tmp_path):
    path = deaot_core.save_checkpoint(deaott, tmp_path / "half.pth", half=True, extra={"step": 7})
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 7 and raw["state_dict"]["decoder.conv_out.weight"].dtype == torch.float16
    model = deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), path)
    assert model.state_dict()["decoder.conv_out.weight"].dtype == torch.float32


# -- golden fidelity -----------------------------------------------------------------------------

@pytest.mark.parametrize("case_json", GOLDEN_CASES, ids=[p.stem for p in GOLDEN_CASES])
def test_golden_case_matches_official(case_json, tmp_path):
    meta, data = load_case(case_json)
    model = build_case_model(meta, case_json, tmp_path)
    result = run_case(meta, data, model)
    assert result["max_abs_diff"] <= 1e-4, result
    # the reference's allowance: labels differ only at a handful of pixels where two classes
    # tie within 1e-4 (the clip sits on near-ties: on an AVX2-only CPU 6 pixels of frames 5 and
    # 6 flip, one of frame 1 with another thread count)
    assert result["max_tie_gap"] <= 2e-4, result
    pixels = meta["H"] * meta["W"]
    assert all(n <= max(10, pixels // 5000) for n in result["label_mismatches"].values()), result


# -- modules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder,dims", [("mobilenetv2", (24, 32, 96, 1280)), ("resnet50", (256, 512, 1024, 1024)),
                                          ("swin_base", (128, 256, 512, 512))])
def test_encoder_strides_and_dims(encoder, dims):
    net = build_encoder(encoder).eval()
    h, w = (97, 129) if encoder != "swin_base" else (96, 128)
    with torch.no_grad():
        feats = net(torch.randn(1, 3, h, w))
    assert [f.shape[1] for f in feats] == list(dims)
    for feat, stride in zip(feats, (4, 8, 16, 16)):
        assert feat.shape[-2:] == (-(-h // stride), -(-w // stride))


def _naive_local_attention(q, k, v, bias, radius):
    """Official formula, written plainly: q, k (N, D, H, W) scaled q; v (N, C, H, W); bias (N, W2, H, W)."""
    n, _, h, w = q.shape
    kp = torch.nn.functional.pad(k, (radius,) * 4)
    vp = torch.nn.functional.pad(v, (radius,) * 4)
    offsets = [(dy, dx) for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)]
    logits = torch.stack([(q * kp[:, :, dy:dy + h, dx:dx + w]).sum(1) for dy, dx in offsets], 1) + bias
    inside = torch.zeros(1, 1, h + 2 * radius, w + 2 * radius)
    inside[..., radius:radius + h, radius:radius + w] = 1
    valid = torch.stack([inside[0, 0, dy:dy + h, dx:dx + w] for dy, dx in offsets], 0)[None]
    attn = torch.softmax(logits - (1 - valid) * 1e8, dim=1)
    out = sum(attn[:, i:i + 1] * vp[:, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets))
    return attn, out


@pytest.mark.parametrize("h,w,r,tile", [(6, 9, 2, None), (6, 9, 2, 4), (6, 9, 2, 8), (13, 7, 3, 4), (5, 5, 2, 1),
                                        (17, 30, 7, 8)])
def test_local_attention_equals_the_official_formula(h, w, r, tile):
    """The tiled local attention (and the dense reference, ``tile=None``) against a per-pixel loop."""
    torch.manual_seed(0)
    n, d, c = 3, 8, 5
    q, k, v = torch.randn(n, d, h, w), torch.randn(n, d, h, w), torch.randn(n, c, h, w)
    bias = torch.randn(n, (2 * r + 1) ** 2, h, w)
    ref_attn, ref_out = _naive_local_attention(q, k, v, bias, r)
    seq = lambda x: x.flatten(2).transpose(1, 2).contiguous()  # noqa: E731
    attn = attention.local_attention_weights(seq(q), seq(k), seq(bias), (h, w), r, tile=tile)
    out = attention.local_attention_apply(attn, seq(v), (h, w), r, tile=tile)
    torch.testing.assert_close(attn, seq(ref_attn), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, seq(ref_out), atol=1e-5, rtol=1e-5)


def test_tiled_local_attention_has_the_dense_gradients():
    torch.manual_seed(0)
    h, w, r = 9, 11, 2
    inputs = [torch.randn(2, h * w, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    bias = torch.randn(2, h * w, (2 * r + 1) ** 2, dtype=torch.float64, requires_grad=True)
    grads = []
    for tile in (None, 4):
        q, k, v = inputs
        attn = attention.local_attention_weights(q, k, bias, (h, w), r, tile=tile)
        out = attention.local_attention_apply(attn, v, (h, w), r, tile=tile)
        grads.append(torch.autograd.grad(out.square().sum(), [*inputs, bias]))
    for tiled, dense in zip(*grads):
        torch.testing.assert_close(tiled, dense)


def test_attention_without_fused_kernel_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 1, 50, 16), torch.randn(2, 1, 70, 16), torch.randn(2, 1, 70, 48)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention.attention(q, k, v), ref, atol=1e-6, rtol=1e-5)
    budget = attention._SCORES_BUDGET
    try:
        attention._SCORES_BUDGET = 2 * 70 * 7  # query chunks of 7
        torch.testing.assert_close(attention.attention(q, k, v), ref, atol=1e-6, rtol=1e-5)
    finally:
        attention._SCORES_BUDGET = budget


def test_network_size_follows_the_official_policy():
    assert deaot_core.network_size(193, 257, None, 1040, True) == (193, 257)  # already 16k+1
    assert deaot_core.network_size(1080, 1920, None, 1040, True) == (577, 1041)
    assert deaot_core.network_size(480, 854, None, 1040, True) == (481, 849)
    assert deaot_core.network_size(480, 854, None, 1040, False) == (480, 848)
    assert deaot_core.network_size(1080, 1920, 624, 1040, True) == (577, 1041)


def _clip(t=6, h=65, w=97, objects=3, seed=0):
    """Frames with coloured squares moving right; labels 1..objects."""
    rng = np.random.default_rng(seed)
    frames = np.empty((t, h, w, 3), np.uint8)
    labels = np.zeros((t, h, w), np.int64)
    background = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(t):
        frames[i] = background
        for obj in range(1, objects + 1):
            y, x = 5 + (obj - 1) * (h - 10) // max(objects, 1), 3 + i * 2 + obj * 4
            frames[i, y:y + 8, x:x + 8] = (obj * 70) % 255
            labels[i, y:y + 8, x:x + 8] = obj
    return frames, labels


@pytest.mark.parametrize("name", deaot_core.MODEL_NAMES)
def test_every_variant_tracks_a_small_clip(name):
    torch.manual_seed(0)
    model = deaot_core.build_model(name)
    frames, labels = _clip(t=3, h=64, w=96)
    tracker = deaot_core.Tracker(model, device="cpu", long_term_gap=1)
    first = tracker.step(frames[0], labels[0])
    assert first.shape == (4, 64, 96) and np.array_equal(first.argmax(0).numpy(), labels[0])
    for frame in frames[1:]:
        probs = tracker.step(frame)
        assert probs.shape == (4, 64, 96) and probs.dtype == torch.float32
        torch.testing.assert_close(probs.sum(0), torch.ones(64, 96), atol=1e-5, rtol=0)
        assert tracker.label.shape == (64, 96) and tracker.label.max() <= 3
    assert tracker.long_term_frames == 3


def test_many_objects_run_in_groups_of_ten(deaott):
    frames, labels = _clip(t=3, h=97, w=129, objects=12)
    tracker = deaot_core.Tracker(deaott, device="cpu", batch_groups=False)
    tracker.step(frames[0], labels[0])
    assert len(tracker.groups) == 2 and [g.num_objects for g in tracker.groups] == [[10], [2]]
    probs = tracker.step(frames[1])
    assert probs.shape == (13, 97, 129)
    assert set(np.unique(tracker.label)) <= set(range(13))


@pytest.mark.parametrize("model_name", ["DeAOTT", "DeAOTS", "AOTT"])
def test_batched_groups_equal_groups_run_one_by_one(model_name):
    """Groups made on one frame run as one batch; a group added by a later keyframe starts its
    own batch; every frame's probabilities equal the one-by-one engine's to float rounding."""
    torch.manual_seed(0)
    model = deaot_core.build_model(model_name)
    frames, labels = _clip(t=5, h=65, w=97, objects=23)
    first = np.where(labels[0] > 12, 0, labels[0])  # 12 objects: 2 groups; 11 more on frame 2
    batched, single = (deaot_core.Tracker(model, device="cpu", batch_groups=b) for b in (True, False))
    for t in range(5):
        mask = first if t == 0 else labels[2] if t == 2 else None
        a, b = batched.step(frames[t], mask), single.step(frames[t], mask)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        assert (batched.label == single.label).mean() > 0.999
    assert batched.views[0].sizes == [2, 1] and [g.num_objects for g in batched.groups] == [[10, 10], [int(labels[2].max()) - 20]]
    assert single.views[0].sizes == [1, 1, 1]
    resumed = deaot_core.Tracker(model, device="cpu")
    resumed.load_state(batched.state())  # batches survive a saved state
    assert resumed.views[0].sizes == [2, 1]
    torch.testing.assert_close(resumed.step(frames[4]), batched.step(frames[4]), atol=0, rtol=0)


@pytest.mark.parametrize("size_2d", [(5, 7), (33, 40)])  # dense window / tiles for the shared weights
def test_shared_visual_branch_equals_each_group_alone(size_2d):
    """Layer-1 gated propagation with the visual query and keys of batch 1 and B identity groups'
    values (CPU inference: weights once, the rest group by group) equals each group run alone."""
    torch.manual_seed(0)
    from deaot_core.modeling.attention import GatedPropagation, LocalGatedPropagation
    length, groups = size_2d[0] * size_2d[1], 3
    for module in (GatedPropagation(64, 128, use_linear=False, d_att=32),
                   LocalGatedPropagation(64, 128, 1, d_att=32)):
        module.eval()
        q, k = torch.randn(length, 1, 32), torch.randn(length, 1, 32)
        v, u = torch.randn(length, groups, 256), torch.randn(length, 1, 256)
        with torch.no_grad():
            shared = module(q, k, v, u, size_2d)
            alone = torch.cat([module(q, k, v[:, i:i + 1], u, size_2d) for i in range(groups)], dim=1)
        assert shared.shape == (length, groups, 128)
        torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_name", ["DeAOTT", "SwinB_DeAOTL"])  # 17x17 bank (align corners) / 16x16
def test_label_embedding_of_several_groups_equals_the_one_hot_convolution(model_name):
    torch.manual_seed(0)
    config = deaot_core.get_config(model_name)
    from deaot_core.modeling.model import VOSModel
    model = VOSModel(config).eval()
    with torch.no_grad():
        model.patch_wise_id_bank.weight.normal_()  # every id's column matters
        height, width = (65, 97) if config.align_corners else (64, 96)
        labels = torch.randint(0, config.max_objects + 1, (3, height, width))
        labels[1] = 0  # a group slice without objects
        fast = model.label_embedding(labels)
        reference = model.identity_embedding(model.one_hot(labels))
    assert fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_merge_groups_is_the_official_soft_aggregation():
    torch.manual_seed(0)
    a, b = torch.randn(1, 11, 4, 5), torch.randn(1, 11, 4, 5)
    merged = deaot_core.merge_groups([a, b], 10)
    pa, pb = a.softmax(1), b.softmax(1)
    expected = torch.cat([pa[:, :1] * pb[:, :1], pa[:, 1:], pb[:, 1:]], 1).clamp(1e-5, 1 - 1e-5)
    torch.testing.assert_close(torch.sigmoid(merged), expected)
    assert deaot_core.merge_groups([a], 10) is a


def test_later_keyframe_adds_objects_and_corrects(deaott):
    frames, labels = _clip(t=5, h=65, w=97, objects=3)
    tracker = deaot_core.Tracker(deaott, device="cpu", long_term_gap=2)
    first = labels[0].copy()
    first[first == 3] = 0  # object 3 first appears on frame 2
    tracker.step(frames[0], first)
    assert tracker.num_objects == 2
    tracker.step(frames[1])
    before = tracker.label
    keyframe = np.zeros_like(labels[2])
    keyframe[labels[2] == 3] = 3
    keyframe[labels[2] == 1] = 1  # re-labels object 1: a correction
    probs = tracker.step(frames[2], keyframe)
    assert probs.shape[0] == 3  # the prediction over the objects known before this mask
    assert tracker.num_objects == 3
    label = tracker.label
    assert np.array_equal(label[keyframe > 0], keyframe[keyframe > 0])
    assert not np.any((label == 1) & (keyframe != 1))  # object 1 now comes from the mask only
    assert np.all(label[(keyframe == 0) & (before == 2)] != 1)
    assert tracker.groups[0].entries[-1].is_reference and tracker.groups[0].entries[-1].step == 2
    assert tracker.step(frames[3]).shape[0] == 4


def test_bounded_long_term_memory_keeps_the_reference(deaott):
    frames, labels = _clip(t=7)
    tracker = deaot_core.Tracker(deaott, device="cpu", long_term_gap=1, max_long_term_frames=3)
    tracker.step(frames[0], labels[0])
    for frame in frames[1:]:
        tracker.step(frame)
        assert tracker.long_term_frames <= 3
    group = tracker.groups[0]
    assert group.entries[0].is_reference and group.entries[0].step == 0
    assert [e.step for e in group.entries[1:]] == [5, 6]
    assert group.long_mems[0][0].shape[0] == 3 * group.short_mems[0][0].shape[0]


def test_invalid_inputs_are_refused(deaott):
    frames, labels = _clip(t=2)
    tracker = deaot_core.Tracker(deaott, device="cpu")
    with pytest.raises(ValueError, match="first frame needs a mask"):
        tracker.step(frames[0])
    tracker.reset()
    with pytest.raises(ValueError, match="uint8"):
        tracker.step(frames[0].astype(np.float32), labels[0])
    with pytest.raises(ValueError, match="frame's size"):
        tracker.step(frames[0], labels[0][:10])
    with pytest.raises(ValueError, match="precision"):
        deaot_core.Tracker(deaott, precision="int8")
    tracker = deaot_core.Tracker(deaott, device="cpu")
    tracker.step(frames[0], labels[0])
    with pytest.raises(ValueError, match="the video is"):
        tracker.step(frames[1][:32])


def test_resized_input_is_mapped_back_to_frame_size(deaott):
    frames, labels = _clip(t=3, h=70, w=100)
    tracker = deaot_core.Tracker(deaott, device="cpu", max_long_edge=64)
    tracker.step(frames[0], labels[0])
    assert tracker.input_size == (49, 65)
    assert tracker.step(frames[1]).shape == (4, 70, 100)


def test_flip_test_averages_the_video_and_its_mirror(deaott):
    """test_flip: the mean of a tracker on the video and one on the mirrored video (mirrored
    back), each with its own memory, through a keyframe that adds an object."""
    frames, labels = _clip(t=5, h=65, w=97, objects=3)
    first = labels[0].copy()
    first[first == 3] = 0
    keyframe = np.where(labels[2] == 3, 3, 0)
    masks = {0: first, 2: keyframe}
    both = deaot_core.Tracker(deaott, device="cpu", test_flip=True)
    plain = deaot_core.Tracker(deaott, device="cpu")
    mirror = deaot_core.Tracker(deaott, device="cpu")
    assert [(v.scale, v.flip) for v in both.views] == [(1.0, False), (1.0, True)]
    for t, frame in enumerate(frames):
        mask = masks.get(t)
        got = both.step(frame, mask)
        a = plain.step(frame, mask)
        b = mirror.step(np.ascontiguousarray(frame[:, ::-1]), None if mask is None else mask[:, ::-1].copy())
        expected = (a + torch.flip(b, dims=[2])) / 2 if t else a
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        merged = expected.argmax(0).numpy()
        if mask is not None:
            merged = np.where(mask > 0, mask, np.where(np.isin(merged, np.unique(mask[mask > 0])), 0, merged))
        assert np.array_equal(both.label, merged)
        # each view's memory was written with its own prediction, not the merged one
        assert both.views[1].groups[0].entries[-1].step == mirror.groups[0].entries[-1].step
    assert both.num_objects == 3 and got.shape == (4, 65, 97)


def test_multi_scale_views_follow_the_official_sizes(deaott):
    frames, labels = _clip(t=3, h=70, w=100)
    assert deaot_core.network_size(70, 100, None, 1040, True, scale=1.5) == (97, 145)
    tracker = deaot_core.Tracker(deaott, device="cpu", test_scales=(1.0, 1.5), test_flip=True)
    tracker.step(frames[0], labels[0])
    assert [(v.scale, v.flip, v.input_size) for v in tracker.views] == [
        (1.0, False, (65, 97)), (1.0, True, (65, 97)), (1.5, False, (97, 145)), (1.5, True, (97, 145))]
    assert tracker.input_size == (65, 97)
    for frame in frames[1:]:
        probs = tracker.step(frame)
        assert probs.shape == (4, 70, 100)
        torch.testing.assert_close(probs.sum(0), torch.ones(70, 100), atol=1e-5, rtol=0)
    # one memory per view, at the view's own feature size
    sizes = [v.groups[0].short_mems[0][0].shape[0] for v in tracker.views]
    assert sizes[0] == sizes[1] < sizes[2] == sizes[3]
    for bad in ((), (0.0,), (1.0, -1.0), (float("nan"),)):
        with pytest.raises(ValueError, match="test_scales"):
            deaot_core.Tracker(deaott, test_scales=bad)


def test_train_forward_is_differentiable():
    torch.manual_seed(0)
    model = deaot_core.build_model("DeAOTT").train()
    frames = torch.randn(2, 3, 3, 65, 65)
    labels = torch.randint(0, 3, (2, 3, 65, 65))
    logits = deaot_core.train_forward(model, frames, labels, [2, 2])
    assert len(logits) == 2 and logits[0].shape == (2, 11, 65, 65)
    assert float(logits[0][:, 3:].detach().max()) <= -1e9  # unused identities are masked
    loss = sum(torch.nn.functional.cross_entropy(x[:, :3], labels[:, i + 1]) for i, x in enumerate(logits))
    loss.backward()
    assert model.patch_wise_id_bank.weight.grad is not None
    assert model.LSTT.layers[0].linear_QV.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("precision,min_agreement", [("bf16", 0.9), ("fp16", 0.99)])
def test_reduced_precision_stays_close_to_the_official_labels(precision, min_agreement, tmp_path):
    """Autocast path (CPU autocast here; the same code runs on CUDA). The golden weights are noisy,
    not trained, so labels are unusually sensitive; bf16 keeps 8 mantissa bits."""
    case_json = DATA / "golden" / "A_deaott_2obj.json"
    meta, data = load_case(case_json)
    tracker = deaot_core.Tracker(build_case_model(meta, case_json, tmp_path), device="cpu",
                                 long_term_gap=meta["long_term_mem_gap"], precision=precision)
    for t in range(meta["T"]):
        probs = tracker.step(data["frames"][t], data["keyframe_0"] if t == 0 else None)
        assert probs.dtype == torch.float32
        assert float((tracker.label == data["labels"][t]).mean()) > min_agreement
        if t:
            assert float(np.abs(probs.numpy() - data[f"probs_{t}"]).max()) < 0.1


def test_reduced_precision_runs_channels_last_and_fp32_gets_its_layout_back(deaott):
    """bf16/fp16 default to channels-last (the fast oneDNN/cuDNN kernels); an fp32 tracker made
    later from the same model puts the weights back to the contiguous layout (``Module.to``
    works in place) and gives exactly the probabilities of a model that never left it."""
    frames, labels = _clip(t=3)
    conv = next(m for m in deaott.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))

    def run(tracker):
        return [tracker.step(f, labels[0] if t == 0 else None) for t, f in enumerate(frames)]

    before = run(deaot_core.Tracker(deaott, device="cpu"))
    fast = deaot_core.Tracker(deaott, device="cpu", precision="bf16")
    assert fast.memory_format == torch.channels_last
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    run(fast)
    assert deaot_core.Tracker(deaott, device="cpu", precision="bf16", channels_last=False).memory_format \
        == torch.contiguous_format
    after = run(deaot_core.Tracker(deaott, device="cpu"))
    assert conv.weight.is_contiguous()
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_emulated_cpu_precision_warns(deaott, monkeypatch):
    """A reduced precision this CPU has no native kernels for is emulated (14x slower than fp32
    measured on an AVX2-only CPU): the tracker still runs it as asked, with a RuntimeWarning."""
    import warnings

    from deaot_core import tracker as tracker_module

    assert deaot_core.native_cpu_precision("fp32")
    assert deaot_core.native_cpu_precision("bf16") == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with pytest.raises(ValueError, match="precision"):
        deaot_core.native_cpu_precision("int8")
    monkeypatch.setattr(tracker_module, "native_cpu_precision", lambda p: p == "fp32")
    with pytest.warns(RuntimeWarning, match="no native bf16 kernels"):
        slow = deaot_core.Tracker(deaott, device="cpu", precision="bf16")
    assert slow.precision == "bf16"
    monkeypatch.setattr(tracker_module, "native_cpu_precision", lambda p: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deaot_core.Tracker(deaott, device="cpu", precision="bf16")
        deaot_core.Tracker(deaott, device="cpu")


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="torch.compile needs a C compiler")
def test_compiled_tracker_matches_eager(deaott):
    """``Tracker(compile=True)`` runs the compiled encoder/propagation/decoder (memory growing
    every frame: new shapes recompile) and gives the eager probabilities; the model itself
    stays uncompiled."""
    frames, labels = _clip(t=4)
    eager = deaot_core.Tracker(deaott, device="cpu", long_term_gap=1)
    compiled = deaot_core.Tracker(deaott, device="cpu", long_term_gap=1, compile=True)
    for t, frame in enumerate(frames):
        mask = labels[0] if t == 0 else None
        torch.testing.assert_close(compiled.step(frame, mask), eager.step(frame, mask), atol=1e-4, rtol=1e-4)
        assert (compiled.label == eager.label).mean() > 0.999  # a near-tie pixel may flip
    assert not hasattr(deaott.encode_image, "_torchdynamo_orig_callable")

    # the weights are frozen into the compiled graphs: a tracker on other weights of the same
    # variant must not reuse the first model's constants
    torch.manual_seed(1)
    other = deaot_core.build_model("DeAOTT")
    eager = deaot_core.Tracker(other, device="cpu", long_term_gap=1)
    compiled = deaot_core.Tracker(other, device="cpu", long_term_gap=1, compile=True)
    for t, frame in enumerate(frames[:2]):
        mask = labels[0] if t == 0 else None
        torch.testing.assert_close(compiled.step(frame, mask), eager.step(frame, mask), atol=1e-4, rtol=1e-4)


def test_group_size_comes_from_the_checkpoint_or_the_option(deaott, tmp_path):
    """A checkpoint trained on slots 1-5 (``identity_slots``) runs groups of 5; the option wins;
    official-style files (no key) use all ``max_objects`` slots."""
    frames, labels = _clip(t=2, h=97, w=129, objects=7)
    path = deaot_core.save_checkpoint(deaott, tmp_path / "five.pth", extra={"identity_slots": 5})
    model = deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), path)
    assert model.identity_slots == 5
    for tracker, sizes in ((deaot_core.Tracker(model, batch_groups=False), [[5], [2]]),
                           (deaot_core.Tracker(model, group_size=10), [[7]]),
                           (deaot_core.Tracker(deaot_core.load_checkpoint(
                               deaot_core.build_model("DeAOTT"), deaot_core.save_checkpoint(deaott, tmp_path / "all.pth"))),
                            [[7]])):
        tracker.step(frames[0], labels[0])
        assert [g.num_objects for g in tracker.groups] == sizes
        assert tracker.step(frames[1]).shape == (8, 97, 129)
    with pytest.raises(ValueError, match="group_size"):
        deaot_core.Tracker(model, group_size=11)
    # all ten slots trained, groups of 4 measured best: the advice wins over the slots
    advised = deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), deaot_core.save_checkpoint(
        deaott, tmp_path / "advised.pth", extra={"identity_slots": 10, "group_size": 4}))
    assert (advised.identity_slots, advised.preferred_group_size) == (10, 4)
    tracker = deaot_core.Tracker(advised)
    tracker.step(frames[0], labels[0])
    assert [g.num_objects for g in tracker.groups] == [[4, 3]] and tracker.group_size == 4
    assert deaot_core.Tracker(advised, group_size=10).group_size == 10

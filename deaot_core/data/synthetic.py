"""Procedural video object segmentation clips for training and benchmarking (numpy + OpenCV).

Two generators, both fully determined by a seed:

* :func:`generate_clip` -- a video clip: 2-5 textured objects (ellipses, polygons, blobs, stars,
  crescents) that move along smooth random trajectories, scale, rotate, deform slightly and
  occlude each other (z-order, occasionally swapped) over a moving textured background
  (noise, gradients, stripes, checkers, or real images from a folder). Unlabelled distractor
  shapes, objects sharing a colour family, grayscale textures and camouflaged backgrounds keep
  the task from being solvable by colour alone.
* :func:`generate_static_clip` / :func:`static_sequence` -- the paper's static-image
  pre-training: one image + mask turned into a short sequence by random affine warps,
  flips, colour jitter and resized crops.

Both return a :class:`Clip`: ``frames`` (T, H, W, 3) uint8 RGB and ``labels`` (T, H, W) uint8
with ids 0 (background) and 1..K, where every object 1..K is visible in frame 0 and keeps its
id in every frame. :class:`SyntheticVOS` wraps them as an indexable dataset.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np

__all__ = [
    "Clip", "ClipOptions", "SHAPES", "TEXTURES", "BACKGROUNDS", "generate_clip", "generate_static_clip",
    "static_sequence", "load_backgrounds", "SyntheticVOS", "clip_rng",
]

SHAPES = ("ellipse", "polygon", "blob", "star", "crescent")
TEXTURES = ("flat", "noise", "stripes", "checker", "gradient", "spots")
BACKGROUNDS = ("noise", "gradient", "stripes", "checker", "image")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class Clip(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    labels: np.ndarray  # (T, H, W) uint8, 0 = background, 1..K objects

    @property
    def num_objects(self) -> int:
        return int(self.labels[0].max())


@dataclass(frozen=True)
class ClipOptions:
    """Knobs of :func:`generate_clip` (defaults: a moderately hard clip)."""

    min_objects: int = 2
    max_objects: int = 5
    size_range: tuple[float, float] = (0.07, 0.2)  # object radius / min(H, W)
    speed: float = 1.0  # multiplies every motion (translation, rotation, scaling per frame)
    similar_color_prob: float = 0.35  # all objects share one colour family
    grayscale_prob: float = 0.1  # the whole clip in grayscale (shape and texture cues only)
    camouflage_prob: float = 0.25  # background built from the objects' colours
    max_distractors: int = 3  # unlabelled moving shapes (part of the background)
    zswap_prob: float = 0.25  # two objects swap depth once during the clip
    camera_motion: float = 1.0  # background pan amplitude multiplier
    noise_std: tuple[float, float] = (0.0, 6.0)  # per-frame Gaussian pixel noise (uint8 units)
    min_visible_fraction: float = 0.002  # of the frame area, for every object in frame 0


def clip_rng(seed: int | Sequence[int], index: int | None = None) -> np.random.Generator:
    """The generator used for clip ``index`` of a dataset seeded with ``seed``."""
    entropy = [int(s) for s in (seed if isinstance(seed, (list, tuple)) else [seed])]
    if index is not None:
        entropy.append(int(index))
    return np.random.default_rng(np.random.SeedSequence(entropy))


# ------------------------------------------------------------------------------------- colours
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    pixel = np.array([[[h * 179.0, s * 255.0, v * 255.0]]], dtype=np.float32)
    pixel = np.clip(pixel, 0, [179, 255, 255]).astype(np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _random_color(rng: np.random.Generator, family: tuple[float, float, float] | None = None) -> np.ndarray:
    if family is None:
        return _hsv_to_rgb(rng.random(), rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0))
    h, s, v = family
    return _hsv_to_rgb((h + rng.normal(0, 0.03)) % 1.0, np.clip(s + rng.normal(0, 0.12), 0.1, 1),
                       np.clip(v + rng.normal(0, 0.12), 0.15, 1))


# ------------------------------------------------------------------------------------ textures
def _smooth_noise(rng: np.random.Generator, h: int, w: int, channels: int = 1, octaves: int = 3) -> np.ndarray:
    """Multi-octave value noise in [0, 1], (h, w, channels) float32."""
    out = np.zeros((h, w, channels), np.float32)
    total = 0.0
    base = rng.uniform(2.0, 8.0)
    for octave in range(octaves):
        cells = base * (2 ** octave)
        gh, gw = max(2, int(round(h / max(h, w) * cells)) + 1), max(2, int(round(w / max(h, w) * cells)) + 1)
        grid = rng.random((gh, gw, channels)).astype(np.float32)
        layer = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)
        amp = 0.5 ** octave
        out += amp * layer
        total += amp
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _pattern(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A (h, w, 1) float32 pattern in [0, 1] used to mix two colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    if kind == "flat":
        return np.zeros((h, w, 1), np.float32)
    if kind == "noise":
        return _smooth_noise(rng, h, w, 1, octaves=int(rng.integers(2, 5)))
    if kind == "stripes":
        period = rng.uniform(4.0, max(6.0, min(h, w) / 3))
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period)
        wave = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * math.pi))
        if rng.random() < 0.5:
            wave = (wave > 0.5).astype(np.float32)
        return wave[..., None]
    if kind == "checker":
        period = rng.uniform(4.0, max(6.0, min(h, w) / 4))
        u = xx * math.cos(theta) + yy * math.sin(theta)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        return (((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32))[..., None]
    if kind == "gradient":
        ramp = xx * math.cos(theta) + yy * math.sin(theta)
        ramp -= ramp.min()
        return (ramp / max(float(ramp.max()), 1e-6))[..., None]
    if kind == "spots":
        out = np.zeros((h, w), np.float32)
        count = int(rng.integers(4, 20))
        radius_max = max(2.0, min(h, w) / 6)
        for _ in range(count):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(1.5, radius_max)
            cv2.circle(out, (int(cx), int(cy)), int(r), 1.0, -1, lineType=cv2.LINE_AA)
        return out[..., None]
    raise ValueError(f"unknown pattern {kind!r}")


def _texture(rng: np.random.Generator, h: int, w: int, colors: Sequence[np.ndarray], kind: str) -> np.ndarray:
    """(h, w, 3) float32 RGB in [0, 255]: two colours mixed by a pattern, plus fine grain."""
    mix = _pattern(rng, kind, h, w)
    c0, c1 = colors[0], colors[1]
    tex = c0[None, None] * (1 - mix) + c1[None, None] * mix
    grain = rng.uniform(0, 18)
    if grain > 0:
        tex += (_smooth_noise(rng, h, w, 1, octaves=2) - 0.5) * grain
    return tex


def _background(rng: np.random.Generator, h: int, w: int, palette: Sequence[np.ndarray] | None,
                images: Sequence[np.ndarray] | None) -> np.ndarray:
    """(h, w, 3) float32 background canvas."""
    kinds = list(BACKGROUNDS[:-1])
    if images:
        kinds.append("image")
        if rng.random() < 0.5:
            kinds = ["image"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "image":
        img = images[int(rng.integers(len(images)))]
        ih, iw = img.shape[:2]
        scale = max(h / ih, w / iw) * rng.uniform(1.0, 1.5)
        img = cv2.resize(img, (max(w, int(math.ceil(iw * scale))), max(h, int(math.ceil(ih * scale)))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        y0 = int(rng.integers(0, img.shape[0] - h + 1))
        x0 = int(rng.integers(0, img.shape[1] - w + 1))
        return img[y0:y0 + h, x0:x0 + w].astype(np.float32)
    if palette is not None and len(palette) >= 2:
        idx = rng.choice(len(palette), size=2, replace=False)
        colors = [palette[int(i)] * rng.uniform(0.8, 1.2) for i in idx]
    else:
        colors = [_random_color(rng), _random_color(rng)]
    pattern = {"noise": "noise", "gradient": "gradient", "stripes": "stripes", "checker": "checker"}[kind]
    canvas = _texture(rng, h, w, colors, pattern)
    if kind != "noise":  # break up the regular patterns
        canvas += (_smooth_noise(rng, h, w, 3, octaves=3) - 0.5) * rng.uniform(10, 60)
    return canvas


# -------------------------------------------------------------------------------------- shapes
def _base_radius(rng: np.random.Generator, kind: str, angles: np.ndarray) -> np.ndarray:
    """Radius (<= ~1) of a star-shaped outline at ``angles`` (polar form around the centre)."""
    if kind == "ellipse":
        a, b = 1.0, rng.uniform(0.45, 1.0)
        return a * b / np.sqrt((b * np.cos(angles)) ** 2 + (a * np.sin(angles)) ** 2)
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        corners = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.55, 1.0, n) if rng.random() < 0.6 else np.ones(n)
        pts = np.stack([radii * np.cos(corners), radii * np.sin(corners)], 1)
        return _polygon_radius(pts, angles)
    if kind == "blob":
        r = np.ones_like(angles)
        for k in range(2, 6):
            r += rng.uniform(0, 0.3) / k * np.cos(k * angles + rng.uniform(0, 2 * math.pi))
        return r / r.max()
    if kind == "star":
        n = int(rng.integers(4, 8))
        inner = rng.uniform(0.35, 0.65)
        corners = np.arange(2 * n) * math.pi / n + rng.uniform(0, 2 * math.pi)
        radii = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
        pts = np.stack([radii * np.cos(corners), radii * np.sin(corners)], 1)
        return _polygon_radius(pts, angles)
    raise ValueError(f"unknown shape {kind!r}")


def _polygon_radius(points: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Polar radius of the closed polyline ``points`` (ordered by angle) sampled at ``angles``."""
    ang = np.arctan2(points[:, 1], points[:, 0]) % (2 * math.pi)
    order = np.argsort(ang)
    ang, pts = ang[order], points[order]
    out = np.empty_like(angles)
    a = angles % (2 * math.pi)
    idx = np.searchsorted(ang, a) % len(ang)
    prev = (idx - 1) % len(ang)
    p0, p1 = pts[prev], pts[idx]
    d = np.stack([np.cos(a), np.sin(a)], 1)
    # Intersect the ray t*d with the segment p0 + s (p1 - p0).
    e = p1 - p0
    denom = d[:, 0] * e[:, 1] - d[:, 1] * e[:, 0]
    num = p0[:, 0] * e[:, 1] - p0[:, 1] * e[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(np.abs(denom) > 1e-9, num / denom, np.linalg.norm(p0, axis=1))
    out[:] = np.clip(t, 0.05, 1.5)
    return out


@dataclass
class _Sprite:
    """One moving shape: outline, texture and motion parameters (all in pixels / frames)."""

    kind: str
    base_r: np.ndarray  # radius at _ANGLES, unit scale
    wobble: np.ndarray  # (K, 3): amplitude, frequency (harmonic), temporal speed
    wobble_phase: np.ndarray
    crescent: tuple[float, float, float] | None  # (dx, dy, r) of the cut-out disk, unit scale
    radius: float  # pixels at scale 1
    texture: np.ndarray  # (L, L, 3) float32, L = texture side
    center0: np.ndarray
    velocity: np.ndarray
    osc_amp: np.ndarray  # (2, 2): two sinusoids per axis
    osc_freq: np.ndarray
    osc_phase: np.ndarray
    angle0: float
    spin: float
    spin_amp: float
    spin_freq: float
    scale_amp: float
    scale_freq: float
    scale_phase: float
    scale_drift: float
    aspect_amp: float

    def pose(self, t: float, height: int, width: int) -> tuple[np.ndarray, float, float, float]:
        c = self.center0 + self.velocity * t + (self.osc_amp * np.sin(self.osc_freq * t + self.osc_phase)).sum(1)
        c = np.array([_reflect(c[0], 0, width - 1), _reflect(c[1], 0, height - 1)])
        angle = self.angle0 + self.spin * t + self.spin_amp * math.sin(self.spin_freq * t)
        scale = math.exp(self.scale_amp * math.sin(self.scale_freq * t + self.scale_phase) + self.scale_drift * t)
        aspect = math.exp(self.aspect_amp * math.sin(0.5 * self.scale_freq * t + 1.0))
        return c, angle, scale, aspect

    def outline(self, t: float) -> np.ndarray:
        """(N, 2) unit-scale outline at time t (slow non-rigid deformation)."""
        r = self.base_r.copy()
        for (amp, k, speed), phase in zip(self.wobble, self.wobble_phase):
            r *= 1 + amp * np.sin(k * _ANGLES + phase + speed * t)
        return np.stack([r * np.cos(_ANGLES), r * np.sin(_ANGLES)], 1)


_ANGLES = np.linspace(0, 2 * math.pi, 96, endpoint=False)


def _reflect(x: float, lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)


def _make_sprite(rng: np.random.Generator, height: int, width: int, opts: ClipOptions,
                 colors: Sequence[np.ndarray], speed: float) -> _Sprite:
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    base_kind = "ellipse" if kind == "crescent" else kind
    base_r = _base_radius(rng, base_kind, _ANGLES)
    crescent = None
    if kind == "crescent":
        base_r = np.ones_like(_ANGLES)
        off = rng.uniform(0.35, 0.7)
        ang = rng.uniform(0, 2 * math.pi)
        crescent = (off * math.cos(ang), off * math.sin(ang), rng.uniform(0.6, 0.9))
    n_wobble = 2
    wobble = np.stack([rng.uniform(0.0, 0.12 if kind == "blob" else 0.05, n_wobble),
                       rng.integers(2, 6, n_wobble).astype(np.float64),
                       rng.uniform(0.02, 0.15, n_wobble) * speed], 1)
    side = min(height, width)
    radius = rng.uniform(*opts.size_range) * side
    tex_side = int(math.ceil(2 * radius * 2.0)) + 4  # room for scaling up and the aspect wobble
    texture = _texture(rng, tex_side, tex_side, colors, TEXTURES[int(rng.integers(len(TEXTURES)))])
    # Shading so that objects look like surfaces, not flat stickers.
    if rng.random() < 0.6:
        yy, xx = np.mgrid[0:tex_side, 0:tex_side].astype(np.float32) / tex_side - 0.5
        theta = rng.uniform(0, 2 * math.pi)
        texture = texture * (1 + rng.uniform(0.1, 0.5) * (xx * math.cos(theta) + yy * math.sin(theta)))[..., None]
    v = rng.normal(0, 0.012 * side * speed, 2)
    return _Sprite(
        kind=kind, base_r=base_r, wobble=wobble, wobble_phase=rng.uniform(0, 2 * math.pi, n_wobble),
        crescent=crescent, radius=radius, texture=texture,
        center0=np.array([rng.uniform(0.12, 0.88) * width, rng.uniform(0.12, 0.88) * height]),
        velocity=v,
        osc_amp=rng.uniform(0, 0.12 * side, (2, 2)) * min(1.0, speed),
        osc_freq=rng.uniform(0.05, 0.25, (2, 2)) * speed,
        osc_phase=rng.uniform(0, 2 * math.pi, (2, 2)),
        angle0=rng.uniform(0, 2 * math.pi),
        spin=rng.normal(0, 0.04) * speed,
        spin_amp=rng.uniform(0, 0.3),
        spin_freq=rng.uniform(0.05, 0.2) * speed,
        scale_amp=rng.uniform(0, 0.25),
        scale_freq=rng.uniform(0.03, 0.15) * speed,
        scale_phase=rng.uniform(0, 2 * math.pi),
        scale_drift=rng.normal(0, 0.004) * speed,
        aspect_amp=rng.uniform(0, 0.12),
    )


def _render_sprite(sprite: _Sprite, t: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha (H, W) float32 in [0, 1], texture (H, W, 3) float32) of ``sprite`` at time t."""
    side = sprite.texture.shape[0]
    half = side / 2.0
    center, angle, scale, aspect = sprite.pose(t, height, width)
    # Local (texture) frame: the outline drawn at unit pose, radius in pixels, centred.
    local = np.zeros((side, side), np.float32)
    pts = sprite.outline(t) * sprite.radius + half
    cv2.fillPoly(local, [np.round(pts * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    if sprite.crescent is not None:
        dx, dy, r = sprite.crescent
        cv2.circle(local, (int(round((half + dx * sprite.radius) * 4)), int(round((half + dy * sprite.radius) * 4))),
                   int(round(r * sprite.radius * 4)), 0.0, -1, lineType=cv2.LINE_AA, shift=2)
    # local -> frame: translate(center) * rotate(angle) * scale(s*aspect, s/aspect) * translate(-half)
    cos, sin = math.cos(angle), math.sin(angle)
    sx, sy = scale * aspect, scale / aspect
    lin = np.array([[cos * sx, -sin * sy], [sin * sx, cos * sy]])
    offset = center - lin @ np.array([half, half])
    matrix = np.concatenate([lin, offset[:, None]], 1)
    alpha = cv2.warpAffine(local, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    texture = cv2.warpAffine(sprite.texture, matrix, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
    return alpha, texture


# ----------------------------------------------------------------------------------- generator
def load_backgrounds(folder: str | os.PathLike, max_images: int = 200, max_side: int = 640) -> list[np.ndarray]:
    """RGB images (float32) from ``folder`` (sorted, at most ``max_images``), downscaled to ``max_side``."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in _IMAGE_EXTENSIONS)[:max_images]
    images = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        scale = max_side / max(img.shape[:2])
        if scale < 1:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32))
    if not images:
        raise FileNotFoundError(f"no readable images ({', '.join(_IMAGE_EXTENSIONS)}) in {folder}")
    return images


PLACEMENT_RETRIES = 10


class PlacementError(RuntimeError):
    """No layout of a clip's objects leaves every object visible in frame 0."""


def generate_clip(seed: int | np.random.Generator, num_frames: int = 8, height: int = 241, width: int = 321,
                  num_objects: int | None = None, options: ClipOptions | None = None,
                  backgrounds: Sequence[np.ndarray] | None = None) -> Clip:
    """A synthetic VOS clip, deterministic in ``seed`` (and the other arguments).

    Args:
        seed: an int (or a ``numpy.random.Generator``, consumed).
        num_frames, height, width: clip size.
        num_objects: labelled objects (default: uniform in options.min_objects..max_objects).
        options: see :class:`ClipOptions`.
        backgrounds: optional RGB images (e.g. from :func:`load_backgrounds`) to use as
            backgrounds for about half the clips.
    """
    opts = options or ClipOptions()
    rng = seed if isinstance(seed, np.random.Generator) else clip_rng(seed)
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"clip too small: {num_frames} frames of {height}x{width}")
    k = int(num_objects) if num_objects is not None else int(rng.integers(opts.min_objects, opts.max_objects + 1))
    if not 1 <= k <= 255:
        raise ValueError(f"num_objects must be in 1..255, got {k}")
    sprites, distractors, palette = _draw_sprites(rng, k, height, width, opts)
    scene = _draw_scene(rng, k, num_frames, height, width, opts, palette, backgrounds, len(distractors))
    _place_visibly(rng, sprites, scene, distractors, height, width, opts)
    return _render_clip(rng, scene, sprites, distractors, num_frames, height, width)


@dataclass
class _Scene:
    """What a clip draws besides its sprites: the panning background, the z-order and its swap, the
    lighting gain, noise and grayscale."""

    canvas: np.ndarray
    margin: int
    cam_amp: np.ndarray
    cam_freq: np.ndarray
    cam_phase: np.ndarray
    order: list[int]  # object indexes, back to front
    swap_at: int | None
    swap_pair: tuple[int, int] | None
    gain: tuple[float, float, float]  # amplitude, frequency, phase
    noise_std: float
    grayscale: bool
    dist_z: np.ndarray  # distractor in front of the objects?


def _draw_sprites(rng: np.random.Generator, k: int, height: int, width: int, opts: ClipOptions
                  ) -> tuple[list[_Sprite], list[_Sprite], list[np.ndarray]]:
    """(the k objects, the unlabelled distractors, the objects' colours)."""
    family = None
    if rng.random() < opts.similar_color_prob:
        family = (rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.35, 0.9))
    palette = []
    sprites: list[_Sprite] = []
    for _ in range(k):
        colors = [_random_color(rng, family), _random_color(rng, family if rng.random() < 0.7 else None)]
        palette.extend(colors)
        sprites.append(_make_sprite(rng, height, width, opts, colors, opts.speed))
    distractors = [
        _make_sprite(rng, height, width, opts, [_random_color(rng, family), _random_color(rng)], opts.speed)
        for _ in range(int(rng.integers(0, opts.max_distractors + 1)))
    ]
    return sprites, distractors, palette


def _draw_scene(rng: np.random.Generator, k: int, num_frames: int, height: int, width: int, opts: ClipOptions,
                palette: list[np.ndarray], backgrounds, num_distractors: int) -> _Scene:
    speed = opts.speed
    # Camera: the background canvas is larger than the frame and pans smoothly.
    margin = int(math.ceil(0.1 * min(height, width) * opts.camera_motion * max(speed, 0.5))) + 2
    camouflage = rng.random() < opts.camouflage_prob
    canvas = _background(rng, height + 2 * margin, width + 2 * margin, palette if camouflage else None, backgrounds)
    cam_amp = rng.uniform(0, margin * 0.9, 2)
    cam_freq = rng.uniform(0.02, 0.1, 2) * speed
    cam_phase = rng.uniform(0, 2 * math.pi, 2)
    order = list(rng.permutation(k))  # back to front
    swap_at, swap_pair = None, None
    if k >= 2 and num_frames > 2 and rng.random() < opts.zswap_prob:
        swap_at = int(rng.integers(1, num_frames))
        i, j = rng.choice(k, size=2, replace=False)
        swap_pair = (int(i), int(j))
    gain = (rng.uniform(0, 0.12), rng.uniform(0.02, 0.1), rng.uniform(0, 2 * math.pi))
    noise_std = rng.uniform(*opts.noise_std)
    grayscale = rng.random() < opts.grayscale_prob
    dist_z = rng.random(num_distractors) < 0.5
    return _Scene(canvas, margin, cam_amp, cam_freq, cam_phase, order, swap_at, swap_pair, gain, noise_std,
                  grayscale, dist_z)


def _place_visibly(rng: np.random.Generator, sprites: list[_Sprite], scene: _Scene, distractors: list[_Sprite],
                   height: int, width: int, opts: ClipOptions) -> None:
    """Frame 0 must show every object: re-place the ones that are hidden or too small (later
    attempts enlarge them, then bring them to the front); :class:`PlacementError` after 30."""
    order, dist_z = scene.order, scene.dist_z
    min_pixels = max(4.0, opts.min_visible_fraction * height * width)
    for _attempt in range(30):
        hidden = _hidden_objects(sprites, order, distractors, dist_z, height, width, min_pixels)
        if not hidden:
            return
        for idx in hidden:
            sprites[idx].center0 = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
            if _attempt > 10:
                sprites[idx].radius = max(sprites[idx].radius, 0.08 * min(height, width))
            if _attempt > 20:  # bring it to the front
                order.remove(idx)
                order.append(idx)
                dist_z[:] = False
    raise PlacementError("could not place every object visibly in frame 0")


def _render_clip(rng: np.random.Generator, scene: _Scene, sprites: list[_Sprite], distractors: list[_Sprite],
                 num_frames: int, height: int, width: int) -> Clip:
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    labels = np.empty((num_frames, height, width), np.uint8)
    order, margin = scene.order, scene.margin
    gain_amp, gain_freq, gain_phase = scene.gain
    for t in range(num_frames):
        if scene.swap_at is not None and t == scene.swap_at:
            a, b = order.index(scene.swap_pair[0]), order.index(scene.swap_pair[1])
            order[a], order[b] = order[b], order[a]
        dx = scene.cam_amp[0] * math.sin(scene.cam_freq[0] * t + scene.cam_phase[0])
        dy = scene.cam_amp[1] * math.sin(scene.cam_freq[1] * t + scene.cam_phase[1])
        shift = np.array([[1, 0, -(margin + dx)], [0, 1, -(margin + dy)]], np.float64)
        image = cv2.warpAffine(scene.canvas, shift, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        label = np.zeros((height, width), np.uint8)
        layers = [(d, None) for d, front in zip(distractors, scene.dist_z) if not front]
        layers += [(sprites[i], i + 1) for i in order]
        layers += [(d, None) for d, front in zip(distractors, scene.dist_z) if front]
        for sprite, obj_id in layers:
            alpha, texture = _render_sprite(sprite, float(t), height, width)
            image += alpha[..., None] * (texture - image)
            covered = alpha >= 0.5
            label[covered] = 0 if obj_id is None else obj_id
        image *= 1 + gain_amp * math.sin(gain_freq * t + gain_phase)
        if scene.noise_std > 0:
            image += rng.normal(0, scene.noise_std, image.shape).astype(np.float32)
        if scene.grayscale:
            image[:] = image.mean(axis=2, keepdims=True)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
        labels[t] = label
    return Clip(frames, labels)


def _hidden_objects(sprites: list[_Sprite], order: list[int], distractors: list[_Sprite], dist_z: np.ndarray,
                    height: int, width: int, min_pixels: float) -> list[int]:
    """Objects whose visible area in frame 0 is below ``min_pixels`` or a quarter of their own."""
    label = np.full((height, width), -1, np.int16)  # -1: background or distractor
    own = {}
    layers = [(d, -1) for d, front in zip(distractors, dist_z) if not front]
    layers += [(sprites[i], i) for i in order]
    layers += [(d, -1) for d, front in zip(distractors, dist_z) if front]
    for sprite, idx in layers:
        alpha, _ = _render_sprite(sprite, 0.0, height, width)
        covered = alpha >= 0.5
        if idx >= 0:
            own[idx] = int(covered.sum())
        label[covered] = idx
    counts = np.bincount((label + 1).ravel(), minlength=len(sprites) + 1)[1:]
    return [i for i in range(len(sprites)) if counts[i] < max(min_pixels, 0.25 * own[i])]


# -------------------------------------------------------------------------- static pre-training
def _affine_matrix(rng: np.random.Generator, height: int, width: int, degrees: float, translate: float,
                   scale: tuple[float, float], shear: float, flip: bool) -> np.ndarray:
    """A 2x3 random affine around the image centre (torchvision RandomAffine's ranges)."""
    angle = math.radians(rng.uniform(-degrees, degrees))
    sh = math.radians(rng.uniform(-shear, shear))
    s = rng.uniform(*scale)
    tx, ty = rng.uniform(-translate, translate) * width, rng.uniform(-translate, translate) * height
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear_m = np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    lin = s * rot @ shear_m
    if flip:
        lin = lin @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    offset = np.array([cx + tx, cy + ty]) - lin @ np.array([cx, cy])
    return np.concatenate([lin, offset[:, None]], 1)


def _resized_crop(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, height: int, width: int,
                  area: tuple[float, float] = (0.8, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    ih, iw = label.shape
    target_ratio = width / height
    for _ in range(10):
        a = rng.uniform(*area) * ih * iw
        ratio = target_ratio * math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(a * ratio))), int(round(math.sqrt(a / ratio)))
        if 0 < cw <= iw and 0 < ch <= ih:
            break
    else:
        ch, cw = ih, iw
    y0, x0 = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
    img = cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_CUBIC)
    lab = cv2.resize(label[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_NEAREST)
    return img, lab


def _color_jitter(rng: np.random.Generator, image: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Brightness / contrast / saturation / hue jitter on a float32 RGB image in [0, 255]."""
    out = image * rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)
    mean = out.mean()
    out = (out - mean) * rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength) + mean
    gray = out.mean(axis=2, keepdims=True)
    out = gray + (out - gray) * rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength)
    hue = rng.uniform(-0.1, 0.1) * strength
    if abs(hue) > 1e-3:
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(hue * 180))) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    return out


def static_sequence(image: np.ndarray, mask: np.ndarray, seed: int | np.random.Generator, num_frames: int = 5,
                    height: int = 241, width: int = 321, max_objects: int = 10) -> Clip:
    """A short "video" from one image and its (H, W) label map, as in static-image pre-training.

    Frame 0 is a random resized crop of the (possibly flipped) image; each later frame applies
    an independent random affine warp (rotation +-20 deg, translation +-10 %, scale 0.9-1.1,
    shear +-10 deg, horizontal flip with p=0.3), colour jitter and a random resized crop.
    Objects are renumbered 1..K in order of id among those visible in frame 0 (at most
    ``max_objects``, chosen at random); other ids become background.
    """
    rng = seed if isinstance(seed, np.random.Generator) else clip_rng(seed)
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise ValueError(f"need an (H, W, 3) image and an (H, W) mask, got {image.shape} and {mask.shape}")
    img = image.astype(np.float32)
    lab = mask.astype(np.uint8)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1].copy(), lab[:, ::-1].copy()
    ih, iw = lab.shape
    frames, labels = [], []
    for t in range(num_frames):
        cur_img, cur_lab = img, lab
        if t > 0:
            matrix = _affine_matrix(rng, ih, iw, 20.0, 0.1, (0.9, 1.1), 10.0, flip=rng.random() < 0.3)
            cur_img = cv2.warpAffine(img, matrix, (iw, ih), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=(124, 116, 104))
            cur_lab = cv2.warpAffine(lab, matrix, (iw, ih), flags=cv2.INTER_NEAREST, borderValue=0)
        cur_img = _color_jitter(rng, cur_img, 0.5)
        cur_img, cur_lab = _resized_crop(rng, cur_img, cur_lab, height, width)
        frames.append(np.clip(cur_img, 0, 255).astype(np.uint8))
        labels.append(cur_lab)
    frames_a, labels_a = np.stack(frames), np.stack(labels)
    return Clip(frames_a, relabel_from_reference(labels_a, rng, max_objects))


def relabel_from_reference(labels: np.ndarray, rng: np.random.Generator | None = None,
                           max_objects: int = 10) -> np.ndarray:
    """Renumber (T, H, W) labels so that the objects visible in frame 0 become 1..K.

    Ids absent from frame 0 become background; 255 ("ignore" / void) stays 255. With more
    than ``max_objects`` objects, a random subset (``rng``) or the first ones are kept.
    """
    ids = [int(i) for i in np.unique(labels[0]) if i not in (0, 255)]
    if len(ids) > max_objects:
        ids = sorted(rng.choice(ids, size=max_objects, replace=False).tolist()) if rng is not None \
            else ids[:max_objects]
    lut = np.zeros(max(256, int(labels.max()) + 1), np.uint8)
    lut[255] = 255
    for new, old in enumerate(ids, start=1):
        lut[old] = new
    return lut[labels]


def generate_static_clip(seed: int | np.random.Generator, num_frames: int = 5, height: int = 241, width: int = 321,
                         options: ClipOptions | None = None,
                         backgrounds: Sequence[np.ndarray] | None = None) -> Clip:
    """Static pre-training clip from a synthetic still image (frame 0 of a :func:`generate_clip`)."""
    rng = seed if isinstance(seed, np.random.Generator) else clip_rng(seed)
    still = generate_clip(rng, 1, height, width, options=options, backgrounds=backgrounds)
    return static_sequence(still.frames[0], still.labels[0], rng, num_frames, height, width)


# ------------------------------------------------------------------------------------- dataset
class SyntheticVOS:
    """Indexable dataset of synthetic clips: item ``i`` is the clip of seed (``seed``, i).

    ``static_prob`` of the items are static pre-training sequences instead of videos. The
    motion speed of video items is drawn from ``speed_range`` (frames sampled at a random gap,
    as the official trainer does with real videos). Usable as a ``torch.utils.data.Dataset``.
    """

    def __init__(self, length: int, seed: int = 0, num_frames: int = 5, height: int = 241, width: int = 321,
                 options: ClipOptions | None = None, static_prob: float = 0.0,
                 speed_range: tuple[float, float] = (1.0, 3.0), background_dir: str | os.PathLike | None = None):
        self.length = int(length)
        self.seed = int(seed)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.options = options or ClipOptions()
        self.static_prob = static_prob
        self.speed_range = speed_range
        self.backgrounds = load_backgrounds(background_dir) if background_dir else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = clip_rng(self.seed, index)
        if rng.random() < self.static_prob:
            return generate_static_clip(rng, self.num_frames, self.height, self.width, self.options, self.backgrounds)
        speed = rng.uniform(*self.speed_range)
        opts = self.options if speed == self.options.speed else _replace(self.options, speed=speed)
        for _ in range(PLACEMENT_RETRIES):
            try:  # a rare crowded layout: draw again from the same (advanced) generator, deterministically
                return generate_clip(rng, self.num_frames, self.height, self.width, options=opts,
                                     backgrounds=self.backgrounds)
            except PlacementError:
                continue
        raise PlacementError(f"clip {index}: no layout showing every object after {PLACEMENT_RETRIES} draws")


def _replace(opts: ClipOptions, **changes) -> ClipOptions:
    import dataclasses

    return dataclasses.replace(opts, **changes)

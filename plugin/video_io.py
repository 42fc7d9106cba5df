"""Streaming video decoding with decord (no ffmpeg/ffprobe needed).

Frames are decoded on demand: forward passes read one frame at a time, backward passes read
bounded chunks forward and yield them in reverse, so a video is never held in memory whole.
Frame numbers are FiftyOne's (1-based).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Iterable, Iterator, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded (missing, empty, truncated, undecodable, no frames)."""


def file_problem(path, what: str = "video") -> str | None:
    """Why ``path`` cannot be read as a ``what`` file (missing, a directory, not a regular file),
    or None when it is a regular file."""
    path = os.fspath(path) if path is not None else ""
    if not path:
        return f"no {what} file: the file path is empty"
    if os.path.isfile(path):
        return None
    if os.path.isdir(path):
        return f"{path} is a directory, not a {what} file"
    if os.path.lexists(path) and not os.path.exists(path):
        return f"{what} file not found: {path} is a broken symbolic link"
    if os.path.exists(path):
        return f"{path} is not a regular file (a device, socket or pipe?), not a {what} file"
    return f"{what} file not found: {path}"


_DIGESTS: dict[tuple, str] = {}


def file_digest(path) -> str | None:
    """The sha256 of the file's content (None if it cannot be read). Cached per process by path,
    size, inode and change times: replacing or rewriting the file (even keeping its size and
    modification time) changes its ctime, so a stale digest is never returned."""
    import hashlib

    try:
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            _DIGESTS[key] = digest.hexdigest()
        return _DIGESTS[key]
    except OSError:
        return None


DECODE_THREADS = 1  # decoding runs on a prefetch thread beside the network; more threads only compete with it


class VideoReader:
    """A decord-backed reader of one video file (RGB uint8 frames), decoded on ``num_threads``
    threads (0: decord's automatic choice, one per core)."""

    def __init__(self, path: str, num_threads: int = DECODE_THREADS):
        # torch before decord: with decord2's wheel loaded first, torch's first matrix product
        # crashes the process (a segfault in its BLAS) on Linux x86_64
        import torch  # noqa: F401

        try:
            import decord
        except ImportError as err:  # pragma: no cover - decord is a requirement
            raise VideoError("decord is required to read videos: pip install decord") from err
        self.path = path
        problem = file_problem(path, "video")
        if problem:
            raise VideoError(problem)
        if os.path.getsize(path) == 0:
            raise VideoError(f"video file is empty (0 bytes): {path}")
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as err:
            detail = str(err).strip().splitlines()[0][-300:] if str(err).strip() else type(err).__name__
            raise VideoError(f"cannot open video {path} (missing, truncated or not a decodable video?): "
                             f"{detail}") from err
        self.decoded_frames = len(self._vr)
        if self.decoded_frames <= 0:
            raise VideoError(f"video {path} has no frames")
        try:
            first = self._vr[0].asnumpy()
            self._vr.seek(0)
        except Exception as err:
            raise VideoError(f"cannot decode the first frame of {path}: {err}") from err
        if first.ndim != 3 or first.shape[2] != 3 or first.shape[0] <= 0 or first.shape[1] <= 0:
            raise VideoError(f"video {path} decodes to frames of shape {first.shape}, not (H, W, 3)")
        self.height, self.width = first.shape[:2]
        self.fps = float(self._vr.get_avg_fps() or 0.0)
        self.num_frames = self.decoded_frames

    def limit(self, num_frames: int | None) -> None:
        """Use at most ``num_frames`` frames (e.g. FiftyOne's ``total_frame_count``)."""
        if num_frames is not None and 0 < num_frames < self.decoded_frames:
            self.num_frames = int(num_frames)

    def frame(self, frame_number: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame ``frame_number`` (1-based)."""
        if not 1 <= frame_number <= self.num_frames:
            raise IndexError(f"frame {frame_number} outside 1..{self.num_frames} of {self.path}")
        try:
            return self._vr[frame_number - 1].asnumpy()
        except Exception as err:
            raise VideoError(f"cannot decode frame {frame_number} of {self.path}: {err}") from err

    def forward(self, start: int, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Frames ``start..stop`` (inclusive, 1-based) in order."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        for number in range(start, stop + 1):
            yield number, self.frame(number)

    def backward(self, start: int, stop: int = 1, chunk: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        """Frames ``start`` down to ``stop`` (inclusive, 1-based), decoded in forward chunks of
        at most ``chunk`` frames (seeking backwards frame by frame is slow with long GOPs)."""
        hi = min(start, self.num_frames)
        while hi >= stop:
            lo = max(stop, hi - chunk + 1)
            try:
                batch = self._vr.get_batch(list(range(lo - 1, hi))).asnumpy()
            except Exception as err:
                raise VideoError(f"cannot decode frames {lo}..{hi} of {self.path}: {err}") from err
            for offset in range(batch.shape[0] - 1, -1, -1):
                yield lo + offset, batch[offset]
            del batch
            hi = lo - 1


def open_video(path: str, total_frame_count: int | None = None) -> VideoReader:
    """Open ``path``; the frame count is decord's, capped by FiftyOne's metadata when known."""
    reader = VideoReader(path)
    if total_frame_count:
        if int(total_frame_count) != reader.decoded_frames:
            log.warning("%s: metadata says %s frames, decord decodes %s; using %s", path,
                        total_frame_count, reader.decoded_frames,
                        min(int(total_frame_count), reader.decoded_frames))
        reader.limit(int(total_frame_count))
    return reader


_DONE = object()


def prefetch(frames: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Iterate ``frames`` on a background thread, ``depth`` items ahead: decoding (decord
    releases the GIL) overlaps with the caller's work. Errors are raised in the caller at the
    item where they happened; closing the generator early (cancel, error) stops the thread."""
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in frames:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as err:  # handed to the consumer
            items.put(err)

    worker = threading.Thread(target=produce, name="deaot-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def write_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 24.0, crf: int = 23,
              preset: str = "medium", exact_size: bool = False) -> str:
    """Encode (H, W, 3) uint8 RGB frames as an H.264 MP4 the App can play (yuv420p), with the
    ffmpeg binary of the ``imageio-ffmpeg`` wheel. ``exact_size`` keeps odd sizes exactly
    (H.264 4:4:4, which a browser may not play) instead of padding them to even. Without the
    wheel: OpenCV's MPEG-4 (decodable by decord, not playable in the App). Returns the codec."""
    path = str(path)
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    try:
        import imageio_ffmpeg
    except ImportError:
        import cv2

        log.warning("imageio-ffmpeg is not installed: writing %s as MPEG-4 Part 2, which the App cannot play "
                    "(pip install imageio-ffmpeg for H.264)", path)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for frame in [first, *frames]:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        writer.release()
        return "mp4v"
    pix_fmt = "yuv420p"
    if exact_size and (height % 2 or width % 2):
        pix_fmt = "yuv444p"
        log.warning("%s: odd frame size %dx%d, encoding H.264 4:4:4 (the App's browser may not play it)", path,
                    width, height)
    writer = imageio_ffmpeg.write_frames(
        path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out=pix_fmt,
        macro_block_size=1 if exact_size else 2, quality=None, ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-preset", preset, "-movflags", "+faststart"])
    writer.send(None)
    for frame in [first, *frames]:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return "h264"


def video_metadata(path: str | os.PathLike):
    """``fo.VideoMetadata`` from decord (no ffprobe needed); the MIME type from the file name,
    the codec's four-character code from the container (OpenCV)."""
    import mimetypes

    import fiftyone as fo

    reader = VideoReader(str(path))
    fps = reader.fps or 24.0
    return fo.VideoMetadata(size_bytes=os.path.getsize(path), mime_type=mimetypes.guess_type(str(path))[0],
                            frame_width=reader.width, frame_height=reader.height, frame_rate=fps,
                            total_frame_count=reader.num_frames, duration=reader.num_frames / fps,
                            encoding_str=video_codec(path))


_MP4_SAMPLE_ENTRIES = {"h264": "avc1", "fmp4": "mp4v"}  # OpenCV's codec tag -> the tag ffprobe reports


def video_codec(path: str | os.PathLike):
    """The video stream's codec tag as ffprobe reports it for MP4 ("avc1" for H.264, "mp4v" for
    MPEG-4 part 2; OpenCV's own tag for others), None when unknown."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        code = int(capture.get(cv2.CAP_PROP_FOURCC)) if capture.isOpened() else 0
    finally:
        capture.release()
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
    text = text.lower() if text.isprintable() and text else None
    return _MP4_SAMPLE_ENTRIES.get(text, text)

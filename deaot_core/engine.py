"""Memory and matching for one identity group (up to ``max_objects`` objects), batched.

The network (``VOSModel``) is stateless; ``GroupEngine`` owns the hierarchical memory:
long-term (reference frames + a frame every ``long_term_gap`` steps) and short-term (the last
frame). It follows the official evaluator's order of operations so results match it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .modeling.model import VOSModel
from .modeling.lstt import Memory


def _mover(device: torch.device | str | None):
    """``move(tensor)``: the tensor on ``device`` (None: as it is), the same copy for the same
    tensor, so memory shared between entries stays shared."""
    moved: dict[int, torch.Tensor] = {}

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in moved:
            moved[id(tensor)] = tensor if device is None else tensor.to(device)
        return moved[id(tensor)]

    return move


@dataclass
class _LongTermEntry:
    step: int
    is_reference: bool
    memories: list[Memory]  # one (K, V) per layer


class GroupEngine:
    """Propagates one group of identities through a video, one frame at a time.

    Labels passed in are (B, H, W) integer maps at the network input size with ids in
    0..max_objects; ``num_objects`` is the object count per batch item.
    """

    def __init__(self, model: VOSModel, long_term_gap: int, short_term_skip: int = 1,
                 max_long_term_frames: int | None = None) -> None:
        if long_term_gap < 1:
            raise ValueError(f"long_term_gap must be >= 1, got {long_term_gap}")
        if max_long_term_frames is not None and max_long_term_frames < 1:
            raise ValueError(f"max_long_term_frames must be >= 1 or None, got {max_long_term_frames}")
        self.model = model
        self.long_term_gap = long_term_gap
        self.short_term_skip = short_term_skip
        self.max_long_term_frames = max_long_term_frames
        self.entries: list[_LongTermEntry] = []
        self.long_mems: list[Memory] | None = None
        self.short_history: list[list[Memory]] = []
        self.num_objects: list[int] = []
        self.last_memory_step = 0
        self.pos: torch.Tensor | None = None
        self._outputs = self._currs = self._feats = None

    # -- memory ---------------------------------------------------------------------------------
    def _rebuild_long_term(self) -> None:
        # Newest first, the concatenation order of the official implementation.
        layers = zip(*(entry.memories for entry in reversed(self.entries)))
        self.long_mems = [(torch.cat([k for k, _ in layer]), torch.cat([v for _, v in layer])) for layer in layers]

    def _append_long_term(self, entry: _LongTermEntry) -> None:
        self.entries.append(entry)
        cap = self.max_long_term_frames
        if cap is not None and len(self.entries) > cap:
            # Keep the first reference frame; drop the oldest of the others.
            del self.entries[1 if len(self.entries) > 1 else 0]
        self._rebuild_long_term()

    def _set_short_term(self, memories: list[Memory]) -> None:
        self.short_history = (self.short_history + [memories])[-self.short_term_skip:]

    @property
    def short_mems(self) -> list[Memory]:
        return self.short_history[0]

    @property
    def long_term_frames(self) -> int:
        return len(self.entries)

    def state(self, to: torch.device | str | None = None) -> dict:
        """The memory as plain data (tensors moved ``to`` a device, e.g. "cpu"; lists copied), for
        :meth:`load_state` on an engine of the same model. Tensors shared between long- and
        short-term memory stay shared."""
        move = _mover(to)
        return dict(entries=[dict(step=e.step, is_reference=e.is_reference,
                                  memories=[[move(k), move(v)] for k, v in e.memories]) for e in self.entries],
                    short_history=[[[move(k), move(v)] for k, v in m] for m in self.short_history],
                    num_objects=list(self.num_objects), last_memory_step=self.last_memory_step,
                    pos=None if self.pos is None else move(self.pos))

    def load_state(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore memory saved by :meth:`state` (tensors moved to ``device``)."""
        move = _mover(device)
        self.entries = [_LongTermEntry(int(e["step"]), bool(e["is_reference"]),
                                       [(move(k), move(v)) for k, v in e["memories"]]) for e in state["entries"]]
        self.short_history = [[(move(k), move(v)) for k, v in m] for m in state["short_history"]]
        self.num_objects = [int(n) for n in state["num_objects"]]
        self.last_memory_step = int(state["last_memory_step"])
        self.pos = None if state["pos"] is None else move(state["pos"])
        self._outputs = self._currs = self._feats = None
        if self.entries:
            self._rebuild_long_term()
        else:
            self.long_mems = None

    def identity_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        return self.model.label_embedding(labels)

    # -- steps ----------------------------------------------------------------------------------
    def add_reference(self, feats: list[torch.Tensor], labels: torch.Tensor, num_objects: list[int],
                      step: int) -> None:
        """Make the frame with features ``feats`` and ``labels`` a reference frame at ``step``."""
        self.num_objects = list(num_objects)
        if self.pos is None:
            self.pos = self.model.position_embedding(feats[-1])
        id_emb = self.identity_embedding(labels)
        self._feats = feats
        self._outputs, self._currs, entries = self.model.propagate(feats, None, None, id_emb, self.pos)
        self._append_long_term(_LongTermEntry(step, True, entries))
        self.last_memory_step = step
        self.short_history = [entries]

    def propagate(self, feats: list[torch.Tensor]) -> None:
        """Match the frame with features ``feats`` against memory."""
        self._feats = feats
        self._outputs, self._currs, _ = self.model.propagate(feats, self.long_mems, self.short_mems, None, self.pos)

    def decode(self) -> torch.Tensor:
        """(B, max_objects+1, h, w) float32 logits of the last propagated frame, unused ids at -1e10."""
        logits = self.model.decode(self._outputs, self._feats).float()
        ids = torch.arange(logits.shape[1], device=logits.device)
        unused = ids.view(1, -1) > torch.tensor(self.num_objects, device=logits.device).view(-1, 1)
        return logits.masked_fill(unused[:, :, None, None], -1e10)

    def update_memory(self, step: int, labels: torch.Tensor | None = None,
                      id_emb: torch.Tensor | None = None) -> None:
        """Store the last propagated frame as short-term memory (and long-term every gap steps),
        with identities from ``labels`` (B, H, W) or a ready ``id_emb``."""
        if id_emb is None:
            id_emb = self.identity_embedding(labels)
        memories = [layer.memory_entry(curr, id_emb) for layer, curr in zip(self.model.LSTT.layers, self._currs)]
        self._set_short_term(memories)
        if step - self.last_memory_step >= self.long_term_gap:
            self._append_long_term(_LongTermEntry(step, False, memories))
            self.last_memory_step = step


def train_forward(model: VOSModel, frames: torch.Tensor, labels: torch.Tensor, num_objects: list[int],
                  long_term_gap: int | None = None, use_prediction: bool = False) -> list[torch.Tensor]:
    """Differentiable pass over training sequences, as the official trainer runs them.

    frames: (B, T, 3, H, W) normalised images; labels: (B, T, H, W) ids (frame 0 = reference).
    Memory of frames 1..T-2 uses the ground-truth identities (teacher forcing), or the detached
    argmax prediction if ``use_prediction``. Returns T-1 logits (B, max_objects+1, H, W).
    """
    b, t = frames.shape[:2]
    gap = model.cfg.train_long_term_gap if long_term_gap is None else long_term_gap
    engine = GroupEngine(model, gap)
    feats_all = model.encode_image(frames.flatten(0, 1))
    feats = [[f.reshape(b, t, *f.shape[1:])[:, i] for f in feats_all] for i in range(t)]
    engine.add_reference(feats[0], labels[:, 0], num_objects, step=0)
    outputs = []
    for i in range(1, t):
        engine.propagate(feats[i])
        logits = F.interpolate(engine.decode(), size=frames.shape[-2:], mode="bilinear",
                               align_corners=model.cfg.align_corners)
        outputs.append(logits)
        if i < t - 1:
            memory_labels = logits.detach().argmax(dim=1) if use_prediction else labels[:, i]
            engine.update_memory(i, memory_labels)
    return outputs

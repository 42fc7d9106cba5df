"""The errors of the J&F evaluation (:mod:`deaot_vos.evaluation`) and of its segmentation run
(:mod:`deaot_vos.segmentation_run`), in a module of their own so both can raise them without
importing each other. ``deaot_vos.evaluation`` re-exports them."""
from __future__ import annotations

from .fields import LabelFieldError
from .overwrite import NeedsOverwrite

__all__ = ["EvaluationError", "EvaluationExistsError", "EvaluationLabelError", "EvaluationCancelled",
           "EvaluationRenameRefused", "check_rename_targets"]


class EvaluationError(ValueError):
    """Input that cannot be evaluated; the message names the field and the sample."""


class EvaluationExistsError(NeedsOverwrite, EvaluationError):
    """An evaluation run with this key exists and ``overwrite`` is False (``.field``: the key;
    ``worded("cli")`` / ``worded("app")``: the interface's own control)."""


class EvaluationLabelError(EvaluationError, LabelFieldError):
    """A label of the predictions or the ground truth that cannot be evaluated (a detection without
    a mask, a mask of another size, an unreadable segmentation, ...). The message names the sample
    (id and file name), the frame and the field; the attributes ``sample_id``, ``filepath``,
    ``field``, ``what`` (``pred_field`` / ``gt_field``), ``frame_number`` and ``detail`` too."""

    @classmethod
    def wrap(cls, err: LabelFieldError) -> "EvaluationLabelError":
        new = cls(str(err))
        for name in ("sample_id", "filepath", "field", "what", "frame_number", "detail"):
            setattr(new, name, getattr(err, name, None))
        return new


class EvaluationCancelled(Exception):
    """The progress callback asked to stop; nothing was written."""


class EvaluationRenameRefused(BaseException):
    """``rename_evaluation`` of a J&F run was refused and nothing was renamed: a field the run would
    move to is taken (the message names each one) or the new key is not a valid field prefix.

    A ``BaseException`` on purpose: FiftyOne's ``rename_evaluation`` catches any ``Exception`` raised
    while the run's fields are moved, only logs it and renames the run anyway, after which
    ``delete_evaluation`` of the new key would delete the fields the run wrongly claims. Only an
    exception FiftyOne does not catch keeps the run under its old key. Catch it by this name."""


def check_rename_targets(dataset, eval_key: str, new_eval_key, targets) -> None:
    """Raise :class:`EvaluationRenameRefused` when ``new_eval_key`` is not a valid key or a field the
    run ``eval_key`` would be renamed to (``targets``: field paths, ``frames.`` for frame fields)
    exists already; the message names every such field."""
    where = f"evaluation '{eval_key}' on dataset '{dataset.name}' was not renamed to '{new_eval_key}'"
    if not isinstance(new_eval_key, str) or not new_eval_key.isidentifier():
        raise EvaluationRenameRefused(f"{where}: keys must be valid Python identifiers")
    prefix = dataset._FRAMES_PREFIX
    taken = [f"frame field '{path[len(prefix):]}'" if path.startswith(prefix) else f"sample field '{path}'"
             for path in targets if dataset.has_field(path)]
    if taken:
        raise EvaluationRenameRefused(f"{where}: the run's fields would replace existing fields that are not its "
                                      f"own: {', '.join(taken)}; nothing was renamed (rename or delete those "
                                      f"fields, or choose another key)")

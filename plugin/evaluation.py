"""DAVIS 2017 semi-supervised J&F of a prediction field against a ground-truth field, stored as a
FiftyOne evaluation run.

``evaluate_vos(view, "deaot", "ground_truth", eval_key="deaot_eval")`` scores every video of the
collection with :func:`deaot_core.metrics.davis.sequence_metrics` (the official protocol) and records a real
FiftyOne evaluation run (``dataset.list_evaluations()``, ``get_evaluation_info``,
``load_evaluation_results``, ``rename_evaluation`` and ``delete_evaluation`` all work) plus fields
the App can sort, filter and plot (``rename_evaluation`` onto a key whose fields exist already is
refused before anything moves, with :class:`EvaluationRenameRefused` naming them):

* sample fields ``<eval_key>_JF``, ``<eval_key>_J``, ``<eval_key>_F``: the video's J&F-Mean,
  J-Mean and F-Mean (means over its objects, as in the official per-sequence table);
* frame fields ``<eval_key>_J``, ``<eval_key>_F``: on each scored frame, the mean over objects.

The run is of FiftyOne's ``segmentation`` type (method ``davis2017``), so FiftyOne's Model
Evaluation panel opens it: J&F, J and F as its custom metrics, one class per object label. With
``segmentation_key``, a FiftyOne ``segmentation`` run of label maps is stored too (pixel metrics
beside J&F, :mod:`deaot_vos.segmentation_run`).

Protocol. Both fields are turned into (H, W) id maps (pixel value = object ``index``; see
``deaot_vos.label_frames``). Only frames whose ground truth is set are used, in order (frames without
ground truth are skipped, as DAVIS scores only annotated frames); the first of them is the
reference: its objects (by index, sorted) are the objects scored, as 1..K. As in the official
code the first and last annotated frames are not scored, ground-truth objects absent from the
reference are ignored, objects missing from a prediction score as empty masks, a frame without
a prediction is all background, and a predicted object that is not in the reference on a scored
frame aborts the evaluation (``extra_objects="error"``, official) or is ignored
(``extra_objects="ignore"``, e.g. for objects added by a later keyframe). The dataset-level
summary pools every object of every video with equal weight (``deaot_core.metrics.davis.global_summary``).

Everything is computed before anything is written: an error leaves the dataset unchanged. A
propagation in another process that replaces one of the two fields while they are read makes the
evaluation read them again (:mod:`deaot_vos.consistent_reads`). A label
that cannot be scored (a detection without a mask, a segmentation of another size or without a
mask, a mask file that is missing or a directory, ...) in either field raises
:class:`EvaluationLabelError` (an ``EvaluationError``) naming the sample (id and file name), the
frame and the field (which one and its name).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional

import numpy as np
from bson import json_util

import fiftyone as fo
import fiftyone.core.fields as fof
from fiftyone.utils.eval.base import BaseEvaluationMethod, BaseEvaluationMethodConfig, BaseEvaluationResults

from deaot_core.metrics.davis import STAT_KEYS, SUMMARY_KEYS, global_summary, official_csvs, sequence_metrics

from .consistent_reads import read_consistently
from .metadata import fill_video_metadata
from .fields import (LabelFieldError, check_label_field, describe_sample, frame_size, mask_targets_for, root_dataset,
                     sequence_names)
from .label_frames import read_id_maps, renumber_ids
from .segmentation_run import LabelMapRun, check_segmentation_key
from .evaluation_errors import (EvaluationCancelled, EvaluationError, EvaluationExistsError,  # noqa: F401 (re-exported)
                                EvaluationLabelError, EvaluationRenameRefused, check_rename_targets)
from .tables import format_table

log = logging.getLogger(__name__)

METHOD = "davis2017"
EXTRA_OBJECTS = ("error", "ignore")
SAMPLE_SUFFIXES = ("_JF", "_J", "_F")
FRAME_SUFFIXES = ("_J", "_F")
MAX_OBJECTS = 254  # uint8 ids; 255 is the DAVIS void label

ProgressCallback = Callable[[float, str], Optional[bool]]


#: J&F as custom metrics of the run, for FiftyOne's Model Evaluation panel: (name, summary key, label);
#: the names are those of the segmentation run's metric operators (``deaot_vos.segmentation_run``)
PANEL_METRICS = (("jf_mean", "J&F-Mean", "J&F (DAVIS)"), ("j_mean", "J-Mean", "J (DAVIS region IoU)"),
                 ("f_mean", "F-Mean", "F (DAVIS boundary)"))
PANEL_METRICS_PLUGIN = "@deaot/vos"
NO_LABEL = "(no label)"


def sample_fields(eval_key: str) -> list[str]:
    return [eval_key + s for s in SAMPLE_SUFFIXES]


def frame_fields(eval_key: str) -> list[str]:
    return [eval_key + s for s in FRAME_SUFFIXES]


# --------------------------------------------------------------------------- run machinery


class VOSEvaluationConfig(BaseEvaluationMethodConfig):
    """Configuration of a DAVIS J&F evaluation run.

    Args:
        pred_field: frame field with the predictions
        gt_field: frame field with the ground truth
        bound_th (0.008): boundary tolerance (fraction of the diagonal, or pixels if >= 1)
        extra_objects ("error"): what to do with a predicted object that is not in the
            reference frame: ``"error"`` (official) or ``"ignore"``
        custom_metrics (None): FiftyOne custom metrics (unused by this method)
        segmentation_key (None): the key of the ``segmentation`` run made with this one for the
            Model Evaluation panel (:mod:`deaot_vos.segmentation_run`), if any
    """

    def __init__(self, pred_field, gt_field, bound_th=0.008, extra_objects="error", custom_metrics=None,
                 segmentation_key=None, **kwargs):
        super().__init__(**kwargs)
        self.pred_field = pred_field
        self.gt_field = gt_field
        self.bound_th = bound_th
        self.extra_objects = extra_objects
        self.custom_metrics = custom_metrics
        self.segmentation_key = segmentation_key

    @property
    def type(self):
        # FiftyOne's family of mask evaluations (the method tells this one apart): its Model
        # Evaluation panel opens runs of the types it knows and fails on any other
        return "segmentation"

    @property
    def method(self):
        return METHOD


class VOSEvaluation(BaseEvaluationMethod):
    """DAVIS 2017 semi-supervised J&F (see the module docstring)."""

    def get_fields(self, samples, eval_key, include_custom_metrics=True):
        fields = sample_fields(eval_key) + [samples._FRAMES_PREFIX + f for f in frame_fields(eval_key)]
        if include_custom_metrics:
            fields.extend(self.get_custom_metric_fields(samples, eval_key))
        return fields

    def rename(self, samples, eval_key, new_eval_key):
        """Move the run's fields to ``new_eval_key``'s names, all or nothing: every target name is
        checked first, and a taken one raises :class:`EvaluationRenameRefused` (which FiftyOne lets
        through, so the run keeps its key) before anything moved."""
        dataset = samples._dataset
        sample_moves, frame_moves = _rename_moves(dataset, self, eval_key, new_eval_key)
        if sample_moves:
            dataset.rename_sample_fields(sample_moves)
        try:
            if frame_moves:
                dataset.rename_frame_fields(frame_moves)
        except Exception as err:
            if sample_moves:
                dataset.rename_sample_fields({b: a for a, b in sample_moves.items()})
            raise EvaluationRenameRefused(f"evaluation '{eval_key}' on dataset '{dataset.name}' was not renamed to "
                                          f"'{new_eval_key}': moving its frame fields failed ({err})") from err
        self.rename_custom_metrics(samples, eval_key, new_eval_key)
        samples._rename_sidebar_group(eval_key, new_eval_key)

    def cleanup(self, samples, eval_key):
        dataset = samples._dataset
        dataset.delete_sample_fields(sample_fields(eval_key), error_level=1)
        dataset.delete_frame_fields(frame_fields(eval_key), error_level=1)
        self.cleanup_custom_metrics(samples, eval_key)
        samples._delete_empty_sidebar_group(eval_key)

    def _validate_run(self, samples, eval_key, existing_info):
        pass  # overwriting a run with other fields is fine: cleanup() removes the old run's fields


def _rename_moves(dataset, method: VOSEvaluation, eval_key: str, new_eval_key: str) -> tuple[dict, dict]:
    """(sample, frame) field renames of the run ``eval_key`` to ``new_eval_key``; raises
    :class:`EvaluationRenameRefused` naming every target field that already exists."""
    check_rename_targets(dataset, eval_key, new_eval_key, method.get_fields(dataset, new_eval_key))
    sample_schema = dataset.get_field_schema()
    frame_schema = dataset.get_frame_field_schema() or {}
    sample_moves = {a: b for a, b in zip(sample_fields(eval_key), sample_fields(new_eval_key)) if a in sample_schema}
    frame_moves = {a: b for a, b in zip(frame_fields(eval_key), frame_fields(new_eval_key)) if a in frame_schema}
    return sample_moves, frame_moves


class VOSEvaluationResults(BaseEvaluationResults):
    """Results of a DAVIS J&F evaluation.

    Attributes:
        sequences: one dict per evaluated video: ``sample_id``, ``filepath``, ``name``,
            ``frames`` (annotated frame numbers used, the first is the reference),
            ``scored_frames``, ``K``, ``objects`` (per object: ``index``, ``label`` and the
            official statistics ``J-Mean`` ... ``J&F-Mean``), ``J`` and ``F`` ((K, N) lists,
            column i = ``scored_frames[i]``), ``summary`` (the video's table row) and
            ``missing_predictions`` (annotated frames without a prediction)
        skipped: videos not evaluated (no ground truth): ``sample_id``, ``filepath``, ``reason``
        custom_metrics: FiftyOne's custom metrics, J&F, J and F among them (what the Model
            Evaluation panel lists)
    """

    #: what the Model Evaluation panel reads for an object without a prediction (none: objects are
    #: matched by index) and per-label ids (none: it then skips its per-label views)
    missing = "(none)"
    ytrue_ids = ypred_ids = None

    def __init__(self, samples, config, eval_key, sequences, skipped=None, custom_metrics=None, backend=None):
        super().__init__(samples, config, eval_key, custom_metrics=custom_metrics, backend=backend)
        self.sequences = sequences
        self.skipped = skipped or []
        self.custom_metrics = {**self._panel_metrics(), **(custom_metrics or {})}

    def _panel_metrics(self) -> dict[str, dict]:
        """The global J&F, J and F in FiftyOne's custom-metric form (what the panel lists)."""
        summary = self.summary()
        return {f"{PANEL_METRICS_PLUGIN}/{name}": dict(key=key, value=_none_if_nan(summary[key]), label=label,
                                                       lower_is_better=False)
                for name, key, label in PANEL_METRICS}

    @property
    def objects(self) -> list[dict[str, Any]]:
        """The per-object table: one row per object of every video (the official per-sequence CSV
        rows, with the sample, the object index and label)."""
        rows = []
        for seq in self.sequences:
            for number, obj in enumerate(seq["objects"], start=1):
                rows.append(dict(sequence=f"{seq['name']}_{number}", sample_id=seq["sample_id"],
                                 filepath=seq["filepath"], **obj))
        return rows

    def summary(self) -> dict[str, float]:
        """The official global table (every object of every video pooled with equal weight)."""
        return global_summary(self.objects)

    def metrics(self, *args, **kwargs) -> dict[str, float]:
        return {**self._get_custom_metrics(), **self.summary()}

    def print_metrics(self, digits=3):
        self._print_metrics(self.metrics(), digits=digits)

    def video_rows(self) -> list[dict[str, Any]]:
        """Per-video rows: ``name``, ``sample_id``, ``objects`` and the summary keys."""
        return [dict(name=s["name"], sample_id=s["sample_id"], objects=s["K"], **s["summary"]) for s in self.sequences]

    def print_report(self, digits=3):
        """The per-video table (:meth:`video_rows`)."""
        print(format_table(self.video_rows(), ["name", "objects", *SUMMARY_KEYS], digits=digits))

    # -- what FiftyOne's Model Evaluation panel reads of a ``segmentation`` run: one item per scored
    # object, classed by its label; an object is compared with the predicted object of its index

    @property
    def ytrue(self) -> np.ndarray:
        """The label of every scored object (:data:`NO_LABEL` for none), in :attr:`objects` order."""
        return np.array([row["label"] or NO_LABEL for row in self.objects], dtype=object)

    @property
    def ypred(self) -> np.ndarray:
        return self.ytrue

    @property
    def classes(self) -> np.ndarray:
        return np.array(sorted(set(self.ytrue)), dtype=object)

    def report(self) -> dict[str, dict[str, float | None]]:
        """Per object label: ``support`` (objects), the official summary of those objects, and
        ``precision`` and ``recall`` None (J&F defines neither; the panel's per-class chart needs
        the keys)."""
        rows: dict[str, list] = {}
        for row in self.objects:
            rows.setdefault(row["label"] or NO_LABEL, []).append(row)
        return {label: dict(support=len(group), precision=None, recall=None, **global_summary(group))
                for label, group in sorted(rows.items())}

    def _confusion_matrix(self, classes=None, include_other=False, include_missing=False, other_label=None,
                          tabulate_ids=False):
        """(matrix, classes, ids) as FiftyOne's classification results give them: objects are
        matched by index, so the matrix is diagonal (objects per label)."""
        classes = [str(c) for c in (self.classes if classes is None else classes)]
        if include_missing and self.missing not in classes:
            classes.append(self.missing)
        counts = self.report()
        matrix = np.diag(np.array([counts.get(c, {}).get("support", 0) for c in classes], dtype=int))
        return matrix, classes, None

    def official_csvs(self) -> tuple[str, str]:
        """The official CLI's ``global_results-val.csv`` and ``per-sequence_results-val.csv`` text."""
        return official_csvs({s["name"]: s for s in self.sequences})

    def sequence(self, sample_id: str) -> dict[str, Any] | None:
        for seq in self.sequences:
            if seq["sample_id"] == str(sample_id):
                return seq
        return None

    @classmethod
    def _from_dict(cls, d, samples, config, eval_key, **kwargs):
        return cls(samples, config, eval_key, d.get("sequences") or [], skipped=d.get("skipped"),
                   custom_metrics=d.get("custom_metrics"), **kwargs)


# --------------------------------------------------------------------------- evaluation


# Where versions before the package was named ``deaot_vos`` stored the run classes.
LEGACY_MODULES = ("plugin.evaluation",)


def _legacy_class(path) -> str | None:
    """The current path of a run class stored under a legacy module path, else None."""
    module, _, name = str(path or "").rpartition(".")
    return f"{__name__}.{name}" if module in LEGACY_MODULES else None


def upgrade_legacy_runs(sample_collection) -> list[str]:
    """Rewrite this plugin's evaluation runs stored under a legacy class path (``plugin.evaluation.*``)
    to the stable one, so FiftyOne loads, renames and deletes them with this module's classes.
    Returns the keys upgraded. Idempotent and safe to interrupt: the results document is
    rewritten before the config, so a run counts as legacy while its config is (a run with a
    current config costs no read of its results)."""
    dataset = root_dataset(sample_collection)
    upgraded = []
    for key, run_doc in dict(dataset._doc.evaluations).items():
        config_cls = _legacy_class((run_doc.config or {}).get("cls"))
        if config_cls is None:
            continue
        results = None
        if run_doc.results:
            run_doc.results.seek(0)
            results = json_util.loads(run_doc.results.read().decode())
        results_cls = _legacy_class((results or {}).get("cls"))
        config = dict(run_doc.config, cls=config_cls)
        if results_cls is not None:
            results.pop("cls")
            loaded = VOSEvaluationResults._from_dict(results, dataset, VOSEvaluationConfig.from_dict(dict(config)), key)
            VOSEvaluation.save_run_results(dataset, key, loaded, overwrite=True, cache=False)
        run_doc = dataset._doc.evaluations[key]
        run_doc.config = config
        run_doc.save()
        upgraded.append(key)
        log.info("evaluation run '%s' of dataset '%s' upgraded to %s", key, dataset.name, config["cls"])
    if upgraded:
        dataset.reload()
    return upgraded


def list_vos_evaluations(sample_collection) -> list[str]:
    """Keys of the J&F evaluation runs of this plugin on the collection's dataset (runs stored
    under a legacy class path are upgraded first: :func:`upgrade_legacy_runs`)."""
    dataset = root_dataset(sample_collection)
    upgrade_legacy_runs(dataset)
    return dataset.list_evaluations(type=VOSEvaluation, method=METHOD)


def check_evaluation(sample_collection, pred_field: str, gt_field: str, eval_key: str | None,
                     overwrite: bool = False, extra_objects: str = "error",
                     segmentation_key: str | None = None) -> tuple[str, str]:
    """Validate the fields, the keys and that no unrelated field would be replaced; returns the
    normalised (pred_field, gt_field). Raises ``ValueError`` / ``EvaluationError``."""
    pred_field, gt_field = _check_vos_run(sample_collection, pred_field, gt_field, eval_key, overwrite, extra_objects)
    if segmentation_key is not None:
        check_segmentation_key(sample_collection, segmentation_key, eval_key, (pred_field, gt_field), overwrite)
    return pred_field, gt_field


def _check_vos_run(sample_collection, pred_field: str, gt_field: str, eval_key: str | None, overwrite: bool,
                   extra_objects: str) -> tuple[str, str]:
    dataset = root_dataset(sample_collection)
    pred_field, _ = check_label_field(sample_collection, pred_field, "pred_field")
    gt_field, _ = check_label_field(sample_collection, gt_field, "gt_field")
    if pred_field == gt_field:
        raise EvaluationError(f"pred_field and gt_field are the same field '{gt_field}'")
    if extra_objects not in EXTRA_OBJECTS:
        raise ValueError(f"extra_objects must be one of {EXTRA_OBJECTS}, got {extra_objects!r}")
    if eval_key is None:
        return pred_field, gt_field
    if not isinstance(eval_key, str) or not eval_key.isidentifier():
        raise ValueError(f"invalid eval_key {eval_key!r}: keys must be valid Python identifiers")
    upgrade_legacy_runs(dataset)  # an overwritten legacy run must be cleaned up by this class
    existing = eval_key in dataset.list_evaluations()
    if existing and not overwrite:
        raise EvaluationExistsError(f"dataset '{dataset.name}' already has an evaluation '{eval_key}'", field=eval_key,
                                    alternative="choose another eval_key")
    if existing:
        try:
            config = dataset.get_evaluation_info(eval_key).config
        except Exception:
            config = None
        if config is not None and not isinstance(config, VOSEvaluationConfig):
            raise EvaluationError(f"evaluation '{eval_key}' on dataset '{dataset.name}' is a {config.type!r} evaluation, "
                                  f"not a DeAOT J&F one; delete it or choose another eval_key")
    # our fields must not clobber fields that are not this run's
    own = existing
    sample_schema = dataset.get_field_schema()
    frame_schema = dataset.get_frame_field_schema() or {}
    for name in sample_fields(eval_key):
        if name in sample_schema and not own:
            raise EvaluationError(f"sample field '{name}' already exists on dataset '{dataset.name}' and does not belong "
                                  f"to an evaluation '{eval_key}'; choose another eval_key")
    for name in frame_fields(eval_key):
        if name in (pred_field, gt_field) or (name in frame_schema and not own):
            raise EvaluationError(f"frame field '{name}' already exists on dataset '{dataset.name}' and does not belong "
                                  f"to an evaluation '{eval_key}'; choose another eval_key")
    return pred_field, gt_field


def evaluate_sequence(gt, pred, *, sample_id: str = "", filepath: str = "", name: str = "",
                      pred_field: str = "pred", gt_field: str = "gt", gt_is_segmentation: bool = False,
                      bound_th: float = 0.008, extra_objects: str = "error") -> dict[str, Any]:
    """Score one video from its :class:`deaot_vos.label_frames.IdMaps` (``gt``, ``pred``): see the module
    docstring. Returns the ``sequences`` entry of :class:`VOSEvaluationResults`."""
    where = describe_sample(sample_id, filepath)
    frames = list(gt.frames)
    if len(frames) < 3:
        raise EvaluationError(f"{where}: ground truth '{gt_field}' is set on {len(frames)} frame(s) {frames}; the DAVIS "
                              f"protocol needs at least 3 annotated frames (the first is the reference, the first and "
                              f"last are not scored)")
    reference = gt.maps[frames[0]]
    ref_ids = sorted(int(v) for v in np.unique(reference) if v != 0 and not (gt_is_segmentation and v == 255))
    if len(ref_ids) > MAX_OBJECTS:
        raise EvaluationError(f"{where}: {len(ref_ids)} objects on the reference frame {frames[0]} of '{gt_field}'; "
                              f"at most {MAX_OBJECTS} are supported")
    lut = {index: k for k, index in enumerate(ref_ids, start=1)}
    shape = reference.shape
    gt_stack = np.zeros((len(frames),) + shape, dtype=np.uint8)
    pred_stack = np.zeros((len(frames),) + shape, dtype=np.uint8)
    missing = []
    for i, number in enumerate(frames):
        gt_stack[i], _ = renumber_ids(gt.maps[number], lut)
        p = pred.maps.get(number)
        if p is None:
            missing.append(number)
            continue
        if p.shape != shape:
            raise EvaluationError(f"{where}: frame {number} of '{pred_field}' is {p.shape[1]}x{p.shape[0]}, the ground "
                                  f"truth is {shape[1]}x{shape[0]}")
        pred_stack[i], unknown = renumber_ids(p, lut)
        if unknown and 0 < i < len(frames) - 1 and extra_objects == "error":
            raise EvaluationError(
                f"{where}: frame {number} of '{pred_field}' has object index(es) {unknown} that are not on the reference "
                f"frame {frames[0]} of '{gt_field}' (objects {ref_ids}); the official protocol aborts here. Pass "
                f"extra_objects='ignore' to score only the reference objects")
    res = sequence_metrics(gt_stack, pred_stack, bound_th=bound_th)
    objects = [dict(index=index, label=gt.labels.get(index), **{k: float(o[k]) for k in STAT_KEYS})
               for index, o in zip(ref_ids, res["objects"])]
    if missing:
        log.warning("%s: %d annotated frame(s) have no prediction in '%s' (scored as background): %s", where,
                    len(missing), pred_field, missing[:10])
    return dict(sample_id=str(sample_id), filepath=filepath, name=name, frames=frames, scored_frames=frames[1:-1],
                K=int(res["K"]), objects=objects, J=res["J"].tolist(), F=res["F"].tolist(),
                summary={k: float(v) for k, v in res["summary"].items()}, missing_predictions=missing)


def evaluate_vos(sample_collection, pred_field: str, gt_field: str = "ground_truth", eval_key: str | None = None,
                 bound_th: float = 0.008, extra_objects: str = "error", overwrite: bool = False,
                 progress: ProgressCallback | None = None,
                 segmentation_key: str | None = None) -> VOSEvaluationResults:
    """Evaluate ``pred_field`` against ``gt_field`` on every video of ``sample_collection`` with the
    DAVIS 2017 semi-supervised protocol (see the module docstring).

    Args:
        sample_collection: a video ``Dataset`` or ``DatasetView``
        pred_field, gt_field: frame fields with Detections (instance masks), Segmentation or
            Polylines; objects are matched by ``index`` (segmentations: pixel value)
        eval_key: key of the evaluation run to store (None: compute only, write nothing)
        bound_th: boundary tolerance (official 0.008 of the image diagonal)
        extra_objects: ``"error"`` (official) or ``"ignore"`` predicted objects absent from the
            reference frame
        overwrite: replace existing evaluations with these keys (else refused)
        progress: ``progress(fraction, label)`` per video; return False to cancel
            (``EvaluationCancelled``, nothing written)
        segmentation_key: also store a FiftyOne ``segmentation`` run under this key (needs
            ``eval_key``): label maps of the scored frames, evaluated by ``evaluate_segmentations``
            with J&F, J-Mean and F-Mean as custom metrics, for the Model Evaluation panel
            (:mod:`deaot_vos.segmentation_run`)

    Returns:
        a :class:`VOSEvaluationResults`
    """
    t0 = time.time()
    dataset = root_dataset(sample_collection)
    pred_field, gt_field = check_evaluation(sample_collection, pred_field, gt_field, eval_key, overwrite, extra_objects,
                                            segmentation_key)
    gt_is_segmentation = dataset.get_frame_field_schema()[gt_field].document_type is fo.Segmentation
    config = VOSEvaluationConfig(pred_field, gt_field, bound_th=bound_th, extra_objects=extra_objects,
                                 segmentation_key=segmentation_key)
    method = config.build()
    label_maps = LabelMapRun(dataset, segmentation_key, gt_field, gt_is_segmentation) if segmentation_key else None
    try:
        sequences, skipped = read_consistently(dataset, [pred_field, gt_field], lambda: _evaluate_videos(
            sample_collection, config, gt_is_segmentation, progress, label_maps))
        if label_maps is not None:
            label_maps.commit(sample_collection, bound_th, extra_objects)
    except BaseException:
        if label_maps is not None:
            label_maps.discard()
        raise
    results = VOSEvaluationResults(sample_collection, config, eval_key, sequences, skipped=skipped, backend=method)
    if eval_key is not None:
        _write(sample_collection, dataset, method, eval_key, results, overwrite)
        fill_video_metadata(sample_collection)  # a saved run: the App plays its videos without ffprobe
    log.info("evaluated %d video(s) (%d skipped) in %.1fs: J&F-Mean %.3f", len(sequences), len(skipped),
             time.time() - t0, results.summary()["J&F-Mean"])
    if progress is not None:
        progress(1.0, "done")
    return results


def _evaluate_videos(sample_collection, config: VOSEvaluationConfig, gt_is_segmentation: bool,
                     progress: ProgressCallback | None, label_maps: LabelMapRun | None) -> tuple[list, list]:
    """Read and score every video; returns (sequences, skipped). Each scored video's id maps are
    staged in ``label_maps`` when given."""
    dataset = root_dataset(sample_collection)
    pred_field, gt_field = config.pred_field, config.gt_field
    gt_targets, pred_targets = mask_targets_for(dataset, gt_field), mask_targets_for(dataset, pred_field)
    has_sequence = "sequence" in dataset.get_field_schema()
    columns = ["id", "filepath", "metadata"] + (["sequence"] if has_sequence else [])
    values = sample_collection.values(columns)
    ids, paths, metas = values[0], values[1], values[2]
    names = sequence_names(ids, paths, values[3] if has_sequence else None)
    sequences, skipped = [], []
    total = len(ids)
    for i, (sid, path, meta, name) in enumerate(zip(ids, paths, metas, names)):
        if progress is not None and progress(i / max(total, 1), f"[{i + 1}/{total}] {os.path.basename(path)}") is False:
            raise EvaluationCancelled("cancelled by the progress callback; nothing was written")
        try:
            height, width = frame_size(sid, path, meta)
            gt = read_id_maps(sample_collection, sid, path, gt_field, height, width, gt_targets, what="gt_field")
            if not gt.frames:
                log.warning("%s has no ground truth in '%s'; skipped", describe_sample(sid, path), gt_field)
                skipped.append(dict(sample_id=str(sid), filepath=path, reason=f"no ground truth in '{gt_field}'"))
                continue
            pred = read_id_maps(sample_collection, sid, path, pred_field, height, width, pred_targets,
                                what="pred_field")
        except LabelFieldError as err:
            raise EvaluationLabelError.wrap(err) from err
        sequences.append(evaluate_sequence(gt, pred, sample_id=sid, filepath=path, name=name, pred_field=pred_field,
                                           gt_field=gt_field, gt_is_segmentation=gt_is_segmentation,
                                           bound_th=config.bound_th, extra_objects=config.extra_objects))
        if label_maps is not None:
            label_maps.add(sid, path, gt, pred)
    return sequences, skipped


def _none_if_nan(value: float):
    return None if value is None or value != value else float(value)


def _write(sample_collection, dataset, method: VOSEvaluation, eval_key: str, results: VOSEvaluationResults,
           overwrite: bool) -> None:
    """Register the run (an existing run with this key is deleted with its fields), then write the
    fields in bulk and save the results."""
    method.register_run(sample_collection, eval_key, overwrite=overwrite)
    for name in sample_fields(eval_key):
        dataset.add_sample_field(name, fof.FloatField)
    for name in frame_fields(eval_key):
        dataset.add_frame_field(name, fof.FloatField)
    per_sample = {name: {} for name in sample_fields(eval_key)}
    per_frame = {name: {} for name in frame_fields(eval_key)}
    jf, j, f = sample_fields(eval_key)
    fj, ff = frame_fields(eval_key)
    for seq in results.sequences:
        sid = seq["sample_id"]
        if seq["K"] == 0:
            for name in per_sample:
                per_sample[name][sid] = None
            continue
        per_sample[jf][sid] = _none_if_nan(seq["summary"]["J&F-Mean"])
        per_sample[j][sid] = _none_if_nan(seq["summary"]["J-Mean"])
        per_sample[f][sid] = _none_if_nan(seq["summary"]["F-Mean"])
        jm = np.asarray(seq["J"], dtype=np.float64).mean(axis=0)
        fm = np.asarray(seq["F"], dtype=np.float64).mean(axis=0)
        per_frame[fj][sid] = {int(n): float(v) for n, v in zip(seq["scored_frames"], jm)}
        per_frame[ff][sid] = {int(n): float(v) for n, v in zip(seq["scored_frames"], fm)}
    for name, vals in per_sample.items():
        if vals:
            dataset.set_values(name, vals, key_field="id")
    for name, vals in per_frame.items():
        if vals:
            dataset.set_values("frames." + name, vals, key_field="id")
    method.save_run_results(sample_collection, eval_key, results)
    method.add_fields_to_sidebar_group(sample_collection, eval_key)

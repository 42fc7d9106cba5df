"""The ``segmentation`` companion of a J&F evaluation: a run type FiftyOne's Model Evaluation panel
supports, carrying the official DAVIS J&F, J-Mean and F-Mean as its custom metrics.

``evaluate_vos(..., eval_key="deaot_eval", segmentation_key="deaot_seg")`` writes, on every
annotated ground-truth frame the J&F run scored, two frame fields of ``fo.Segmentation`` label maps
(pixel value = object ``index``, 0 = background; uint8, or uint16 for indexes above 255):

* ``<segmentation_key>_gt_labelmap``: the ground truth as the J&F run read it;
* ``<segmentation_key>_pred_labelmap``: the prediction on the same frames (a frame without one is
  all background, as the J&F run scores it),

with their mask targets (``0: "background"``, each index: its object's label; without the
background target FiftyOne scores every pixel as a class and reports 1.0), then runs FiftyOne's
own ``evaluate_segmentations`` on them with the custom metrics ``@deaot/vos/jf_mean``,
``@deaot/vos/j_mean`` and ``@deaot/vos/f_mean`` (:mod:`deaot_vos.jf_metrics`), which score the
label maps with the DAVIS protocol again: ``results.metrics()["J&F-Mean"]`` is the J&F run's.

Writing is staged through the propagation's protocol (:mod:`deaot_vos.propagation.journal`): the
two label-map fields are claimed (one run per key at a time), the maps go to the reserved
temporary fields ``<label-map field>_deaot_tmp`` while the videos are read, and are renamed into
place only once every video was read and scored; an error deletes them. A run killed at any point
is undone by the next run with that key (its temporary fields, and when it died while committing,
the half-replaced label maps and segmentation run). A user field with a temporary field's name is
refused, never touched. If the run itself fails, its label maps and its run are removed before
the error is raised.
Deleting the segmentation run (``delete_evaluation``) leaves the two label-map fields (they are its
inputs; :func:`delete_label_maps` removes them and their mask targets); a new run with the key and
``overwrite`` replaces them.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import warnings
from collections import Counter

import numpy as np

import fiftyone as fo
import fiftyone.core.fields as fof
from fiftyone.operators.registry import OperatorRegistry
from fiftyone.utils.eval.segmentation import SimpleEvaluation, SimpleEvaluationConfig, evaluate_segmentations

from .evaluation_errors import EvaluationError, EvaluationExistsError, check_rename_targets
from .fields import describe_sample, root_dataset
from .label_frames import IdMaps
from .propagation.journal import TMP_SUFFIX, FieldBusyError, claim_fields, refuse_unowned_temporaries

log = logging.getLogger(__name__)

PLUGIN = "@deaot/vos"
#: the custom metrics: operator name -> their key in ``results.metrics()`` (the official names)
METRICS = {"jf_mean": "J&F-Mean", "j_mean": "J-Mean", "f_mean": "F-Mean"}
LABEL_MAP_SUFFIXES = ("_gt_labelmap", "_pred_labelmap")
RUN_SUFFIXES = ("_accuracy", "_precision", "_recall")  # FiftyOne's own fields of a segmentation run
VOID = 255  # the DAVIS void value of a ground-truth label map
_FO_EVAL_LOGGER = "fiftyone.utils.eval.base"  # where FiftyOne logs a custom metric that failed


def metric_uris() -> list[str]:
    return [f"{PLUGIN}/{name}" for name in METRICS]


def label_map_fields(key: str) -> tuple[str, str]:
    """(ground truth, prediction) label-map frame fields of the segmentation run ``key``."""
    return key + LABEL_MAP_SUFFIXES[0], key + LABEL_MAP_SUFFIXES[1]


def staging_fields(key: str) -> tuple[str, str]:
    """The reserved temporary fields the label maps of ``key`` are staged in."""
    return tuple(name + TMP_SUFFIX for name in label_map_fields(key))


@contextlib.contextmanager
def claimed_label_maps(dataset: fo.Dataset, key: str):
    """Claim the label-map fields of ``key`` for the block (``FieldBusyError`` while another live
    run holds them; a killed run's journal is settled first); refuses a temporary-named field no
    run owns. Yields (gt claim, pred claim)."""
    fields = label_map_fields(key)
    with claim_fields(dataset, fields) as claims:
        refuse_unowned_temporaries(dataset, fields)
        yield tuple(claims[name] for name in fields)


def is_label_map_run(dataset: fo.Dataset, key: str) -> bool:
    """Whether ``key`` is a segmentation run on this key's label-map fields (a run made here)."""
    if key not in dataset.list_evaluations():
        return False
    gt, pred = label_map_fields(key)
    return key in dataset.list_evaluations(type="segmentation", gt_field="frames." + gt, pred_field="frames." + pred)


def check_segmentation_key(sample_collection, key, eval_key: str | None, fields: tuple[str, str],
                           overwrite: bool) -> None:
    """Refuse a segmentation run that cannot be made or would replace what is not its own
    (``fields``: the J&F run's pred and gt fields). Raises ``ValueError`` / ``EvaluationError``."""
    dataset = root_dataset(sample_collection)
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"invalid segmentation_key {key!r}: keys must be valid Python identifiers")
    if eval_key is None:
        raise ValueError("segmentation_key needs an eval_key: the segmentation run accompanies a stored J&F run")
    if key == eval_key:
        raise EvaluationError(f"segmentation_key and eval_key are both '{key}': the two runs need two keys")
    registry = OperatorRegistry()  # one look at the plugins for the three metrics
    missing = [uri for uri in metric_uris() if not registry.operator_exists(uri)]
    if missing:
        raise EvaluationError(
            f"FiftyOne does not find the custom metrics {missing}: the segmentation run needs the plugin {PLUGIN} "
            f"where FiftyOne looks for plugins (plugins dir {fo.config.plugins_dir!r}; see the README's install "
            f"section)")
    # a killed run with this key is undone before its fields are judged (a live one is refused by its claim)
    with contextlib.suppress(FieldBusyError), claimed_label_maps(dataset, key):
        pass
    own = is_label_map_run(dataset, key)
    if key in dataset.list_evaluations():
        if not own:
            raise EvaluationError(f"evaluation '{key}' on dataset '{dataset.name}' is not a segmentation run of "
                                  f"DeAOT label maps; delete it or choose another segmentation_key")
        if not overwrite:
            raise EvaluationExistsError(f"dataset '{dataset.name}' already has an evaluation '{key}'", field=key,
                                        alternative="choose another segmentation_key")
    sample_schema = dataset.get_field_schema()
    frame_schema = dataset.get_frame_field_schema() or {}
    for name in [key + suffix for suffix in RUN_SUFFIXES]:
        if (name in sample_schema or name in frame_schema) and not own:
            raise EvaluationError(f"field '{name}' already exists on dataset '{dataset.name}' and does not belong to "
                                  f"a segmentation run '{key}'; choose another segmentation_key")
    for name in label_map_fields(key):
        if name in fields or (name in frame_schema and not own):
            raise EvaluationError(f"frame field '{name}' already exists on dataset '{dataset.name}' and does not "
                                  f"belong to a segmentation run '{key}'; choose another segmentation_key")


class LabelMapEvaluationConfig(SimpleEvaluationConfig):
    """FiftyOne's ``simple`` segmentation evaluation (same type, method and fields), whose
    ``rename_evaluation`` is all or nothing: see :class:`LabelMapEvaluation`."""


class LabelMapEvaluation(SimpleEvaluation):
    """``simple`` segmentation evaluation that refuses to rename onto existing fields: every target
    field is checked before anything moves, and a taken one raises ``EvaluationRenameRefused``
    (which FiftyOne's ``rename_evaluation`` does not catch, so the run keeps its key; its own
    ``rename`` would move some fields, fail on the first taken one, and rename the run anyway)."""

    def rename(self, samples, eval_key, new_eval_key):
        check_rename_targets(samples._dataset, eval_key, new_eval_key, self.get_fields(samples._dataset, new_eval_key))
        super().rename(samples, eval_key, new_eval_key)


class LabelMapRun:
    """The label maps of one segmentation run, staged video by video (:meth:`add`), then moved into
    place and evaluated (:meth:`commit`), or removed (:meth:`discard`)."""

    def __init__(self, dataset: fo.Dataset, key: str, gt_field: str, gt_is_segmentation: bool):
        self.dataset, self.key, self.gt_field = dataset, key, gt_field
        self.gt_is_segmentation = gt_is_segmentation
        self.labels: dict[int, set] = {}  # object index -> labels seen
        self.videos = 0  # videos staged
        self._claimed = contextlib.ExitStack()  # the claims of the label-map fields, held until settled
        self.claims = self._claimed.enter_context(claimed_label_maps(dataset, key))  # settles a killed run
        try:
            for claim, name in zip(self.claims, staging_fields(key)):
                # journalled before it exists: a kill from here on is undone by the next run
                claim.set_phase("staging", tmp=name, staged_at=datetime.datetime.now(datetime.timezone.utc),
                                undo_commit=True, evaluation=key)
                claim.tmp = name
                dataset.add_frame_field(name, fof.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
        except BaseException:
            self.discard()
            raise

    def add(self, sample_id: str, filepath: str, gt: IdMaps, pred: IdMaps) -> None:
        """Stage the label maps of one scored video: ``gt``'s annotated frames and ``pred`` on them."""
        where = f"{describe_sample(sample_id, filepath)}, frame {gt.frames[0]} of field '{self.gt_field}'"
        if not self.gt_is_segmentation and (gt.maps[gt.frames[0]] == VOID).any():
            raise EvaluationError(f"{where}: object index {VOID} is on the reference frame; a segmentation label "
                                  f"map reads {VOID} as DAVIS void, so the segmentation run cannot score it "
                                  f"(give the object another index, or leave out segmentation_key)")
        maps = [(gt.maps[n], pred.maps.get(n)) for n in gt.frames]
        top = max(int(m.max()) for pair in maps for m in pair if m is not None)
        if top > np.iinfo(np.uint16).max:
            raise EvaluationError(f"{where}: object index {top} does not fit a uint16 label map")
        dtype = np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16
        gt_labels, pred_labels = {}, {}
        for number, (g, p) in zip(gt.frames, maps):
            gt_labels[number] = fo.Segmentation(mask=g.astype(dtype))
            pred_labels[number] = fo.Segmentation(mask=(np.zeros_like(g) if p is None else p).astype(dtype))
        gt_name, pred_name = staging_fields(self.key)
        self.dataset.set_values("frames." + gt_name, {sample_id: gt_labels}, key_field="id")
        self.dataset.set_values("frames." + pred_name, {sample_id: pred_labels}, key_field="id")
        self.videos += 1
        for ids in (gt, pred):
            for index, label in ids.labels.items():
                if not (index == VOID and self.gt_is_segmentation):
                    self.labels.setdefault(int(index), set()).add(label)

    def mask_targets(self) -> dict[int, str]:
        """``{0: "background", index: label}``: an object's label when it has one label that no other
        object uses, else ``"<label> #<index>"`` (the panel tells classes apart by their names)."""
        names = {index: (next(iter(seen)) if len(seen) == 1 and None not in seen else None)
                 for index, seen in self.labels.items()}
        names = {index: (name if name and name != "background" else str(index)) for index, name in names.items()}
        counts = Counter(names.values())
        return {0: "background", **{index: (name if counts[name] == 1 else f"{name} #{index}")
                                    for index, name in sorted(names.items())}}

    def commit(self, sample_collection, bound_th: float, extra_objects: str):
        """Replace this key's previous run and label maps, move the staged maps into place and run
        ``evaluate_segmentations`` with the J&F metrics; returns its results. On failure the new
        run and maps are removed and the error is raised."""
        dataset, key = self.dataset, self.key
        if not self.videos:
            raise EvaluationError(f"segmentation run '{key}': no video of the collection has ground truth in "
                                  f"'{self.gt_field}', so there is nothing to score")
        for claim in self.claims:  # from here a kill is undone (run and label maps) by the next run
            claim.set_phase("commit")
        final = label_map_fields(key)
        targets = self.mask_targets()
        try:
            if is_label_map_run(dataset, key):
                dataset.delete_evaluation(key)
            delete_label_maps(dataset, key)
            dataset.rename_frame_fields(dict(zip(staging_fields(key), final)))
            dataset.mask_targets = {**(dataset.mask_targets or {}), **{"frames." + n: targets for n in final}}
            dataset.save()
            results = self._evaluate(sample_collection, targets, bound_th, extra_objects)
            for claim in self.claims:
                claim.set_phase("claimed", tmp=None)
                claim.tmp = None
        except BaseException:
            self._remove()
            self.discard()
            raise
        self._claimed.close()
        return results

    def _evaluate(self, sample_collection, targets: dict, bound_th: float, extra_objects: str):
        gt, pred = label_map_fields(self.key)
        custom = {uri: dict(bound_th=bound_th, extra_objects=extra_objects) for uri in metric_uris()}
        with _metric_failures() as failures, warnings.catch_warnings():
            # frames without ground truth are not scored (as in DAVIS); FiftyOne warns about each
            warnings.filterwarnings("ignore", message="Skipping sample with missing")
            results = evaluate_segmentations(sample_collection, "frames." + pred, "frames." + gt, eval_key=self.key,
                                             mask_targets=targets, method=LabelMapEvaluationConfig,
                                             custom_metrics=custom, progress=False)
        missing = [uri for uri in metric_uris() if uri not in (results.custom_metrics or {})]
        if missing:
            reason = "; ".join(failures) or "no object was scored (the reference frames are empty): J&F is undefined"
            raise EvaluationError(f"segmentation run '{self.key}': the custom metrics {missing} were not computed: "
                                  f"{reason}")
        log.info("segmentation run '%s': %s", self.key, {k: results.metrics()[k] for k in METRICS.values()})
        return results

    def _remove(self) -> None:
        if self.key in self.dataset.list_evaluations():
            self.dataset.delete_evaluation(self.key)
        delete_label_maps(self.dataset, self.key)

    def discard(self) -> None:
        """Delete the staged label maps (if any) and release the claims (repeatable)."""
        try:
            self.dataset.reload()
            schema = self.dataset.get_frame_field_schema() or {}
            owned = [claim.tmp for claim in self.claims if claim.tmp is not None]
            self.dataset.delete_frame_fields([n for n in owned if n in schema], error_level=1)
            for claim in self.claims:
                if claim.tmp is not None:
                    claim.set_phase("claimed", tmp=None)
                    claim.tmp = None
        finally:
            self._claimed.close()  # a journal not set back to "claimed" lets the next run finish the undo


def delete_label_maps(sample_collection, key: str) -> None:
    """Delete the two label-map fields of the segmentation run ``key`` and their mask targets
    (``delete_evaluation`` keeps them: they are the run's inputs)."""
    dataset = root_dataset(sample_collection)
    schema = dataset.get_frame_field_schema() or {}
    dataset.delete_frame_fields([n for n in label_map_fields(key) if n in schema], error_level=1)
    targets = dict(dataset.mask_targets or {})
    stale = [path for path in ("frames." + n for n in label_map_fields(key)) if path in targets]
    if stale:
        dataset.mask_targets = {path: value for path, value in targets.items() if path not in stale}
        dataset.save()


@contextlib.contextmanager
def _metric_failures():
    """Collect the warnings FiftyOne logs when a custom metric fails (it does not raise)."""
    failures: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            failures.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger(_FO_EVAL_LOGGER)
    logger.addHandler(handler)
    try:
        yield failures
    finally:
        logger.removeHandler(handler)

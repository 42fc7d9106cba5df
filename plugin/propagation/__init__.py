"""Propagation of keyframe masks through a collection's videos (the FiftyOne side).

Modules, by concept:

- :mod:`.options`: ``PropagationOptions``, every setting in one validated object;
- :mod:`.plan`: the checks done once before anything is written (fields, weights);
- :mod:`.sample_path`: the per-video path every entry point takes (keyframes with marks, the
  checks of each sample, out-of-memory retries): :func:`.sample_path.propagate_sample`;
- :mod:`.video_pass`: one video through :func:`deaot_core.propagation.propagate_video`, to labels;
- :mod:`.writer`: buffered bulk writes on a worker thread;
- :mod:`.staging`: how labels reach the output (local swap, or a queued job's per-video commit);
- :mod:`.journal`: output-field claims and the swap journal;
- :mod:`.job_records`, :mod:`.jobs`: scale-out over delegated operations;
- :mod:`.cancel`: cooperative cancel (signals, delegated operations marked failed);
- :mod:`.run`: :func:`propagate`, plan -> video passes -> commit.
"""
from .cancel import CANCEL_POLL_SECONDS, DelegatedCancelCheck, PropagationCancelled, cancel_on_signals
from .errors import NoKeyframesError, OutputExistsError
from .job_records import JobHandle, job_status
from .jobs import JOB_PARAM, OPERATOR_URI, queue_propagation, run_task, split_size
from .journal import TMP_SUFFIX, FieldBusyError
from .options import DEFAULT_OUTPUT, PropagationOptions, check_test_scales
from .plan import check_fields
from .run import propagate
from .writer import BackgroundWriter

__all__ = ["BackgroundWriter", "CANCEL_POLL_SECONDS", "DEFAULT_OUTPUT", "DelegatedCancelCheck", "FieldBusyError",
           "JOB_PARAM", "JobHandle", "NoKeyframesError", "OPERATOR_URI", "OutputExistsError", "PropagationCancelled",
           "PropagationOptions", "TMP_SUFFIX", "cancel_on_signals", "check_fields", "check_test_scales",
           "job_status", "propagate", "queue_propagation", "run_task", "split_size"]

"""Thin FiftyOne operators of the ``@deaot/vos`` plugin; the work is done in ``plugin/``."""
from .compare_panel import CompareVOS, VOSComparePanel
from .cvat_ops import ImportCVATMasks
from .evaluate_vos import EvaluateVOS
from .jf_metrics import FMean, JFMean, JMean
from .propagate_masks import PropagateMasks
from .suggest_keyframes import SuggestKeyframes
from .video_metadata import ComputeVideoMetadata
from .vos_io_ops import ExportVOS, ImportVOS

OPERATORS = (PropagateMasks, EvaluateVOS, CompareVOS, VOSComparePanel, ExportVOS, ImportVOS, JFMean, JMean, FMean,
             SuggestKeyframes, ComputeVideoMetadata, ImportCVATMasks)

__all__ = ["OPERATORS", "PropagateMasks", "EvaluateVOS", "CompareVOS", "VOSComparePanel", "ExportVOS", "ImportVOS",
           "JFMean", "JMean", "FMean", "SuggestKeyframes", "ComputeVideoMetadata", "ImportCVATMasks"]

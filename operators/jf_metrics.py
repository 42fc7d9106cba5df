"""``@deaot/vos/jf_mean``, ``j_mean``, ``f_mean``: the official DAVIS J&F, J-Mean and F-Mean as
FiftyOne custom metrics of ``segmentation`` evaluations of videos (thin operators over
:mod:`deaot_vos.jf_metrics`; ``evaluate_vos(..., segmentation_key=...)`` makes such runs)."""
from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.evaluation import EXTRA_OBJECTS
from deaot_vos.jf_metrics import metric_value
from deaot_vos.segmentation_run import METRICS


class _DavisMetric(foo.EvaluationMetric):
    """One entry of the official DAVIS summary of a segmentation run's label maps."""

    NAME = ""
    LABEL = ""
    DESCRIPTION = ""

    @property
    def config(self):
        config = foo.EvaluationMetricConfig(
            name=self.NAME,
            label=self.LABEL,
            description=self.DESCRIPTION,
            eval_types=["segmentation"],
            aggregate_key=METRICS[self.NAME],
            lower_is_better=False,
            unlisted=True,
        )
        # FiftyOne 1.22 stores lower_is_better in the results from config.kwargs, not the attribute
        config.kwargs["lower_is_better"] = False
        return config

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.float("bound_th", default=0.008, label="Boundary tolerance",
                     description="F's boundary tolerance: a fraction of the image diagonal (official 0.008), "
                                 "or pixels if >= 1")
        inputs.enum("extra_objects", list(EXTRA_OBJECTS), default="error", label="Extra predicted objects",
                    description="error (official): a predicted object absent from the reference frame aborts; "
                                "ignore: score only the reference frame's objects")
        return types.Property(inputs)

    def compute(self, samples, results, bound_th=0.008, extra_objects="error"):
        return metric_value(METRICS[self.NAME], samples, results, bound_th=bound_th, extra_objects=extra_objects)


class JFMean(_DavisMetric):
    NAME = "jf_mean"
    LABEL = "J&F (DAVIS)"
    DESCRIPTION = "DAVIS 2017 J&F-Mean of the video sequences: mean of J-Mean and F-Mean over every object"


class JMean(_DavisMetric):
    NAME = "j_mean"
    LABEL = "J (DAVIS region IoU)"
    DESCRIPTION = "DAVIS 2017 J-Mean of the video sequences: per-object region IoU, averaged"


class FMean(_DavisMetric):
    NAME = "f_mean"
    LABEL = "F (DAVIS boundary)"
    DESCRIPTION = "DAVIS 2017 F-Mean of the video sequences: per-object boundary F-measure, averaged"


METRIC_OPERATORS = (JFMean, JMean, FMean)

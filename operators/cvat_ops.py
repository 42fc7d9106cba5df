"""``@deaot/vos/import_cvat_masks``: a thin operator over ``deaot_vos.formats.cvat.import_cvat_masks``."""
from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.formats.cvat import import_cvat_masks

from .common import app_wording, target_view, video_target_notice


class ImportCVATMasks(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="import_cvat_masks",
            label="DeAOT: import CVAT masks",
            description="Add the <mask> shapes of CVAT video XML (which FiftyOne's CVAT importer drops) to the "
                        "videos' frames as instance masks",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Import CVAT masks")
        if not video_target_notice(ctx, inputs, "Imports into"):
            return types.Property(inputs, view=form)
        inputs.str("xml_path", required=True, label="CVAT XML",
                   description="A CVAT video XML, a folder of them, or a CVATVideoDataset folder (labels/); each XML "
                               "goes to the video with its file name")
        inputs.str("label_field", default="cvat_masks", label="Mask field",
                   description="Frame field of Detections (created if missing; same-index detections replaced)")
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        p = ctx.params
        with app_wording():
            return import_cvat_masks(target_view(ctx), p["xml_path"], p.get("label_field") or "cvat_masks")

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("samples", label="Videos")
        outputs.int("masks", label="Masks")
        outputs.int("frames", label="Frames")
        return types.Property(outputs, view=types.View(label="Imported"))

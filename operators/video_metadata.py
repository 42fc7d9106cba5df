"""``@deaot/vos/compute_video_metadata``: a thin operator over
:func:`deaot_vos.metadata.fill_video_metadata` (the App plays videos without ffmpeg)."""
from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.metadata import fill_video_metadata

from .common import target_view, video_target_notice


class ComputeVideoMetadata(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_video_metadata",
            label="DeAOT: compute video metadata (no ffmpeg)",
            description="Read each video's size, frame rate and frame count with decord, so the App plays "
                        "videos whose metadata is missing without ffmpeg/ffprobe",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if video_target_notice(ctx, inputs, "Reads"):
            inputs.bool("overwrite", default=False, label="Overwrite",
                        description="Recompute the metadata of videos that already have it")
        return types.Property(inputs, view=types.View(label="Compute video metadata"))

    def execute(self, ctx):
        summary = fill_video_metadata(target_view(ctx), overwrite=bool(ctx.params.get("overwrite", False)))
        ctx.trigger("reload_dataset")
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("filled", label="Videos given metadata")
        outputs.int("kept", label="Videos that already had it")
        outputs.list("failed", types.String(), label="Videos that could not be read")
        return types.Property(outputs, view=types.View(label="Video metadata"))

"""``@deaot/vos/export_vos`` and ``@deaot/vos/import_vos``: thin operators over ``deaot_vos.formats.vos``."""
from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.formats.vos import LABEL_TYPES, LAYOUTS, export_vos, import_vos
from deaot_vos.overwrite import CONTROLS

from .common import app_wording, dropdown, label_fields, target_view, throttled_progress, video_target_notice


def _radio(values):
    view = types.RadioGroup()
    for v in values:
        view.add_choice(v, label=v)
    return view


class ExportVOS(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="export_vos",
            label="DeAOT: export DAVIS / YouTube-VOS",
            description="Write the videos (JPEG frames) and a mask field (palette PNGs) as a DAVIS or YouTube-VOS folder",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Export as DAVIS / YouTube-VOS")
        if not video_target_notice(ctx, inputs, "Exports"):
            return types.Property(inputs, view=form)
        fields = label_fields(ctx.dataset)
        inputs.enum("label_field", fields, required=True, label="Mask field", view=dropdown(fields),
                    default=fields[0] if fields else None)
        inputs.str("export_dir", required=True, label="Export folder")
        inputs.enum("layout", list(LAYOUTS), default="davis", label="Layout", view=_radio(LAYOUTS))
        inputs.bool("overwrite", default=False, label="Overwrite", description="Replace existing sequence folders")
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        p = ctx.params
        progress = throttled_progress(ctx)
        with app_wording():
            summary = export_vos(target_view(ctx), p["export_dir"], p["label_field"], layout=p.get("layout") or "davis",
                                 overwrite=bool(p.get("overwrite", False)), progress=progress)
        return dict(export_dir=summary["export_dir"], layout=summary["layout"], sequences=len(summary["sequences"]),
                    annotated=sum(s["annotated"] for s in summary["sequences"].values()))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("export_dir", label="Folder")
        outputs.str("layout", label="Layout")
        outputs.int("sequences", label="Sequences")
        outputs.int("annotated", label="Annotated frames")
        return types.Property(outputs, view=types.View(label="Exported"))


class ImportVOS(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="import_vos",
            label="DeAOT: import DAVIS / YouTube-VOS",
            description="Load a DAVIS or YouTube-VOS folder as a new FiftyOne video dataset (one MP4 per sequence)",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Import a DAVIS / YouTube-VOS folder")
        inputs.str("dataset_dir", required=True, label="Folder",
                   description="Holds JPEGImages/<seq>/ and Annotations/<seq>/ (and meta.json for YouTube-VOS)")
        name = inputs.str("name", required=True, label="New dataset name")
        inputs.bool("overwrite", default=False, label="Overwrite", description="Replace a dataset with this name")
        inputs.enum("layout", ["auto", *LAYOUTS], default="auto", label="Layout", view=_radio(["auto", *LAYOUTS]))
        inputs.str("label_field", default="ground_truth", label="Mask field")
        inputs.enum("label_type", list(LABEL_TYPES), default="detections", label="Label type", view=_radio(LABEL_TYPES))
        requested = ctx.params.get("name")
        if requested and fo.dataset_exists(requested) and not ctx.params.get("overwrite", False):
            name.invalid = True
            name.error_message = f"dataset '{requested}' already exists; {CONTROLS['app']} to replace it"
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        p = ctx.params
        progress = throttled_progress(ctx)
        with app_wording():
            ds = import_vos(p["dataset_dir"], p["name"], label_field=p.get("label_field") or "ground_truth",
                            layout=p.get("layout") or "auto", label_type=p.get("label_type") or "detections",
                            overwrite=bool(p.get("overwrite", False)), persistent=True, progress=progress)
        return dict(dataset=ds.name, samples=len(ds))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("dataset", label="Dataset")
        outputs.int("samples", label="Videos")
        return types.Property(outputs, view=types.View(label="Imported"))

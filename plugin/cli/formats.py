"""``export-vos`` and ``import-vos``: DAVIS / YouTube-VOS folders; ``import-cvat-masks``: the
``<mask>`` shapes of CVAT video XML into an imported dataset::

    deaot-vos export-vos --dataset NAME --label-field ground_truth --export-dir DIR [--layout davis|youtube]
    deaot-vos import-vos --dataset-dir DIR --name NAME [--layout auto|davis|youtube]
    deaot-vos import-cvat-masks --dataset NAME --xml FILE_OR_DIR --label-field cvat_masks [--sample-id ID]
"""
from __future__ import annotations

import sys

from ..formats.cvat import import_cvat_masks
from ..formats.vos import export_vos, import_vos
from .common import error_line, load_dataset, load_view


def add_parsers(sub) -> None:
    p = sub.add_parser("export-vos", help="write videos and masks as a DAVIS or YouTube-VOS folder")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--label-field", required=True, help="frame field with the masks")
    p.add_argument("--export-dir", required=True, help="folder to write JPEGImages/ and Annotations/ into")
    p.add_argument("--layout", default="davis", choices=("davis", "youtube"),
                   help="davis: a PNG for every frame; youtube: PNGs for the labelled frames only, plus meta.json")
    p.add_argument("--sample-id", action="append", default=None, help="only this sample (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace existing sequence folders")
    p.set_defaults(handler=run_export)

    p = sub.add_parser("import-vos", help="load a DAVIS or YouTube-VOS folder as a FiftyOne video dataset")
    p.add_argument("--dataset-dir", required=True, help="folder with JPEGImages/, Annotations/ (and meta.json)")
    p.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    p.add_argument("--layout", default="auto", choices=("auto", "davis", "youtube"),
                   help="auto: youtube when the folder has meta.json, else davis")
    p.add_argument("--label-field", default="ground_truth", help="frame field to store the masks in")
    p.add_argument("--label-type", default="detections", choices=("detections", "segmentation"),
                   help="fo.Detections with instance masks, or fo.Segmentation label maps")
    p.add_argument("--video-dir", default=None, help="where to write the MP4s")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate of the MP4s made from the JPEG frames")
    p.add_argument("--sequence", action="append", default=None, help="only this sequence (repeatable)")
    p.add_argument("--resolution", default=None, help="DAVIS resolution folder (480p, ...); found automatically")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset with this name")
    p.set_defaults(handler=run_import)

    p = sub.add_parser("import-cvat-masks", help="add the <mask> shapes of CVAT video XML to a dataset's frames "
                                                 "(FiftyOne's CVAT importer drops them)")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name (the CVAT videos already imported)")
    p.add_argument("--xml", required=True, help="a CVAT video XML, a folder of them, or a CVATVideoDataset folder")
    p.add_argument("--label-field", default="cvat_masks", help="frame field for the masks (fo.Detections)")
    p.add_argument("--sample-id", default=None, help="the sample of the XML (default: the video with its file name)")
    p.set_defaults(handler=run_import_cvat_masks)


def run_export(args) -> int:
    loaded = load_view(args)
    if loaded is None:
        return 2
    dataset, view = loaded
    try:
        summary = export_vos(view, args.export_dir, args.label_field, layout=args.layout, overwrite=args.overwrite)
    except (ValueError, RuntimeError, FileExistsError) as err:
        print(error_line(err), file=sys.stderr)
        return 1
    for name, row in summary["sequences"].items():
        print(f"  {name}: {row['frames']} frames, {row['annotated']} annotated, objects {row['objects']}")
    print(f"wrote {len(summary['sequences'])} sequence(s) to {summary['export_dir']} ({summary['layout']} layout)")
    return 0


def run_import(args) -> int:
    try:
        dataset = import_vos(args.dataset_dir, args.name, label_field=args.label_field, layout=args.layout,
                             label_type=args.label_type, video_dir=args.video_dir, fps=args.fps,
                             sequences=args.sequence, resolution=args.resolution, overwrite=args.overwrite,
                             persistent=True)
    except (ValueError, RuntimeError, FileExistsError) as err:
        print(error_line(err), file=sys.stderr)
        return 1
    print(f"dataset '{dataset.name}': {len(dataset)} videos, {dataset.count('frames.' + args.label_field)} "
          f"annotated frames in '{args.label_field}'")
    return 0


def run_import_cvat_masks(args) -> int:
    dataset = load_dataset(args.dataset)
    if dataset is None:
        return 2
    try:
        summary = import_cvat_masks(dataset, args.xml, args.label_field, sample_id=args.sample_id)
    except (ValueError, RuntimeError) as err:
        print(error_line(err), file=sys.stderr)
        return 1
    print(f"added {summary['masks']} mask(s) on {summary['frames']} frame(s) of {summary['samples']} video(s) to "
          f"'{args.label_field}'")
    return 0

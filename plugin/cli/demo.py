"""``demo``: build the demo dataset and propagate its masks (:func:`deaot_vos.demo.run_demo`)."""
from __future__ import annotations

from ..demo import run_demo


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="build the demo dataset and propagate its masks")
    p.add_argument("--name", default="deaot-demo", help="dataset name (replaced if it exists)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--no-real-clips", action="store_true", help="only the synthetic video")
    p.add_argument("--launch", action="store_true", help="open the FiftyOne App at the end (with the plugin loaded and Schedule available)")
    p.set_defaults(handler=run)


def run(args) -> int:
    return run_demo(name=args.name, device=args.device, real_clips=not args.no_real_clips, launch=args.launch)

"""What the command line prints: the propagation summary and a tqdm progress callback
(shared by ``python -m deaot_vos propagate`` and the demo)."""
from __future__ import annotations

import os
import sys


def print_summary(summary: dict, stream=None) -> None:
    """Print a propagation summary (model, one line per video, what was written) to ``stream`` (stdout)."""
    stream = stream or sys.stdout
    print(f"model {summary['model']} ({summary['weights']} weights"
          + (f": {summary['checkpoint']}" if summary.get("checkpoint") else "") + f") on {summary['device']}",
          file=stream)
    for row in summary["samples"]:
        name = os.path.basename(row.get("filepath", row["id"]))
        if row.get("status") == "ok":
            print(f"  {name}: {row['frames']} frames ({row['width']}x{row['height']}), keyframes {row['keyframes']}, "
                  f"{row['objects']} objects, {row['seconds']:.1f}s ({row.get('fps') or 0:.1f} frames/s)", file=stream)
        else:
            print(f"  {name}: {row.get('status')}", file=stream)
    fields = summary["output_field"] + (f" and {summary['segmentation_field']}" if summary.get("segmentation_field") else "")
    if summary.get("signals_during_swap"):
        print(f"{summary['signals_during_swap']} arrived during the final swap of the output field: the swap was "
              f"finished first, frames.{fields} holds the new output", file=sys.stderr)
    if summary.get("written", True):
        print(f"wrote frames.{fields} in {summary.get('seconds', 0):.1f}s", file=stream)
    else:
        print(f"nothing written: frames.{fields} unchanged ({summary.get('seconds', 0):.1f}s)", file=stream)


def tqdm_progress():
    """(bar, progress(fraction, label)): a tqdm bar in per mille driven by a progress callback;
    close the bar when done."""
    from tqdm import tqdm

    bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def progress(fraction, label):
        bar.n = int(round(fraction * 1000))
        bar.set_postfix_str(label, refresh=False)
        bar.refresh()

    return bar, progress

"""Assemble the detailed benchmark page (docs/benchmarks/measurements.md) from the JSON files written by ``bench/bench_speed.py --json``.

    python bench/make_benchmarks_md.py bench/results/cpu.json [more.json ...] [--findings notes.md] -o docs/benchmarks/measurements.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import REFERENCE_FPS, WEIGHTS_NOTE, _fmt, markdown_table, memory_table  # noqa: E402

GPU_COMMAND = ("python bench/bench_speed.py --preset gpu --json bench/results/gpu.json && "
               "python bench/make_benchmarks_md.py bench/results/cpu*.json bench/results/gpu.json "
               "--findings bench/results/findings.md -o docs/benchmarks/measurements.md")


def machine_section(data: dict, source: str) -> str:
    """The machine and conditions of one results file."""
    m = data["machine"]
    threads = sorted({r.get("threads") for r in data["results"] if r.get("threads") is not None})
    lines = [f"- Results file: `{source}` (preset `{data.get('preset') or 'custom'}`), measured {m.get('date', '?')}",
             f"- CPU: {m.get('cpu')}, {m.get('cores')} cores visible; load average at start "
             f"{', '.join(f'{x:.1f}' for x in m.get('load_avg', []))}",
             f"- GPU: {m.get('gpu', 'none')}" + (f" (CUDA {m['cuda']})" if m.get("cuda") else ""),
             f"- torch {m.get('torch')}, Python {m.get('python')}, {m.get('platform')}",
             f"- torch/OpenCV threads per run: {', '.join(map(str, threads)) or 'torch default'}",
             f"- code: git {m.get('git_commit', '?')}"]
    if data.get("note"):
        lines.append(f"- conditions: {data['note']}")
    return "\n".join(lines)


def overhead_table(rows: list[dict]) -> str:
    """Tracker alone vs end to end for the same configuration (the plugin's overhead); the median
    over repeated runs of a configuration."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if not r.get("error") and r.get("fps"):
            key = (r["variant"], r["resolution"], r["objects"], r["frames"], r["precision"], r["device"])
            groups.setdefault(key, {}).setdefault(r["mode"], []).append(r)
    lines = ["| variant | input | obj | frames | runs (tracker / e2e) | tracker FPS | e2e FPS (steady) "
             "| e2e FPS (wall, incl. model load and checks) | e2e time / tracker time | tracker peak RSS MB "
             "| e2e peak RSS MB |",
             "|" + "|".join(["---"] * 11) + "|"]
    for (variant, res, obj, frames, _, _), modes in groups.items():
        if "tracker" not in modes or "e2e" not in modes:
            continue
        t, e = modes["tracker"], modes["e2e"]

        def med(part: list[dict], key: str) -> float | None:
            values = [r[key] for r in part if r.get(key) is not None]
            return float(np.median(values)) if values else None

        ratio = med(t, "fps") / med(e, "fps")
        lines.append(f"| {variant} | {res} | {obj} | {frames} | {len(t)} / {len(e)} | {_fmt(med(t, 'fps'), 2)} | "
                     f"{_fmt(med(e, 'fps'), 2)} | {_fmt(med(e, 'fps_wall'), 2)} | {_fmt(ratio, 2)}x | "
                     f"{_fmt(med(t, 'peak_rss_mb'))} | {_fmt(med(e, 'peak_rss_mb'))} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def reference_table(rows: list[dict]) -> str:
    """Official V100 numbers next to the measured ones (relative to DeAOTT, same resolution/device)."""
    measured: dict[tuple, dict] = {}
    for r in rows:
        if r["mode"] == "tracker" and not r.get("error") and r["objects"] == 2 and r["precision"] == "fp32" \
                and r["frames"] < 200:
            measured.setdefault((r["device"], r["resolution"]), {}).setdefault(r["variant"], r["fps"])
    groups = [(k, v) for k, v in measured.items() if "DeAOTT" in v and len(v) >= 3]
    head = "| variant | official FPS (V100, fp32, 1.3x480p) | official / DeAOTT |"
    for (device, res), _ in groups:
        head += f" measured FPS ({device}, {res}) | measured / DeAOTT |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name, fps in REFERENCE_FPS.items():
        line = f"| {name} | {fps} | {fps / REFERENCE_FPS['DeAOTT']:.2f} |"
        for _, values in groups:
            got = values.get(name)
            line += f" {_fmt(got, 2)} | {_fmt(got / values['DeAOTT'] if got else None, 2)} |"
        lines.append(line)
    return "\n".join(lines)


def _results_section(source: str, data: dict) -> list[str]:
    """Tables of one results file."""
    rows = data["results"]
    out = [f"## Results: `{source}`", ""]
    if data.get("note"):
        out += [f"Conditions: {data['note']} (measured {data['machine'].get('date', '?')}, load average at start "
                f"{', '.join(f'{x:.1f}' for x in data['machine'].get('load_avg', []))}).", ""]
    short = [r for r in rows if r["frames"] < 200]
    for title, mode in (("Tracker alone", "tracker"), ("End to end (deaot_vos.propagate)", "e2e")):
        part = [r for r in short if r["mode"] == mode]
        if part:
            out += [f"### {title}", "", markdown_table(part), ""]
    overhead = overhead_table(short)
    if overhead:
        out += ["### Tracker vs end to end (same configuration)", "", overhead, ""]
    long_rows = [r for r in rows if r["frames"] >= 200 or r.get("max_long_term_frames")]
    if long_rows:
        out += ["### Memory over time (long runs)", "", memory_table(long_rows), "",
                "Samples (frame: RSS MB (long-term frames)):", ""]
        for r in long_rows:
            if r.get("error"):
                continue
            pts = ", ".join(f"{p['frame']}: {p['rss_mb']:.0f}"
                            + (f"/{p['gpu_alloc_mb']:.0f}G" if "gpu_alloc_mb" in p else "")
                            + (f" ({p['long_term_frames']})" if "long_term_frames" in p else "")
                            for p in r["memory_samples"])
            out.append(f"- {r['mode']} {r['variant']} {r['resolution']} {r['objects']} obj, {r['frames']} frames, "
                       f"gap {r.get('long_term_gap')}, cap {r.get('max_long_term_frames') or 'none'}: {pts}")
        out.append("")
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += ["### Failed runs", ""] + [f"- {r['mode']} {r['variant']} {r['resolution']} {r['objects']} obj "
                                          f"{r['frames']} frames: {r['error']}" for r in errors] + [""]
    return out


def build(files: list[str], findings: str | None = None) -> str:
    """The whole page (``findings``: Markdown inserted after the method section)."""
    datasets = [(f, json.loads(Path(f).read_text())) for f in files]
    rows = [r for _, d in datasets for r in d["results"]]
    has_gpu = any(str(r.get("device", "")).startswith("cuda") and not r.get("error") for r in rows)
    out = ["# Benchmarks", "",
           "Speed and memory of the DeAOT/AOT variants: the tracker alone (`deaot_core.Tracker.step` on frames "
           "rendered on the fly) and end to end through the plugin (`deaot_vos.propagate`: decord decode + tracker + "
           "conversion to `fo.Detections` + bulk write-back to MongoDB). Generated by "
           "`bench/make_benchmarks_md.py` from " + ", ".join(f"`{f}`" for f, _ in datasets) + ".", "",
           "## Machine", ""]
    same = ("cpu", "cores", "torch", "gpu", "platform", "git_commit")
    for n, (f, d) in enumerate(datasets):
        first = datasets[0][1]["machine"]
        if n and all(d["machine"].get(k) == first.get(k) for k in same):
            m = d["machine"]
            out += [f"- Results file: `{f}` (preset `{d.get('preset') or 'custom'}`), same machine and code, "
                    f"measured {m.get('date', '?')}, load average at start "
                    f"{', '.join(f'{x:.1f}' for x in m.get('load_avg', []))}", ""]
        else:
            out += [machine_section(d, f), ""]
    out += ["## How it was measured", "",
            f"- {WEIGHTS_NOTE}",
            "- Input: synthetic clips (textured ellipses bouncing over a panning textured background; every object "
            "visible on frame 1). The tracker bench renders each frame on the fly; the end-to-end bench encodes the "
            "same clip once as mp4v (cached under `~/.cache/deaot-bench`) and puts it in a FiftyOne dataset with "
            "a keyframe (instance masks) on frame 1, in a private mongod.",
            "- Each run is a fresh Python process, so `peak RSS` (VmHWM from `/proc/self/status`) is that run's: it "
            "includes the Python interpreter and torch (~0.7 GB resident after import and model build with this "
            "CUDA build of torch), and for e2e FiftyOne; the mongod process is not counted. GPU peak is "
            "`torch.cuda.max_memory_allocated`.",
            "- FPS and ms/frame are over the propagated frames: the first frame (the reference) and one warm-up "
            "frame are left out. Tracker: the time of `step()` + reading `tracker.label`. End to end (steady): the "
            "interval between the plugin's per-frame progress callbacks (decode, step, mask → Detections, and "
            "the bulk write every 64 frames); `wall` divides all frames by the whole `propagate()` call "
            "(including model load, keyframe checks and the final write). `--threads` sets torch and OpenCV "
            "threads; decord picks its own decoding threads.",
            "- Network input: the official test-time policy (long edge ≤ 1040, sides 16k+1 for the "
            "MobileNet/ResNet variants), so 1080p runs at about 1.45x the pixels of 480p while decode, resize and "
            "mask output stay at full resolution. 20 objects = 2 identity groups (10 per group): propagation "
            "and decoding run twice per frame.",
            "- Memory over time: RSS (and GPU allocated memory on CUDA) every N frames; once the long-term memory "
            "holds `max_long_term_frames` frames the slope (least squares, MB per 1000 frames) and spread (max - min) "
            "of the later samples. DeAOTT's official long-term gap is 9999 (its long-term memory never grows), so "
            "the long runs use `long_term_gap=5` (the L variants' official gap) to exercise the cap.", ""]
    if findings:
        out += [findings.strip(), ""]
    for f, d in datasets:
        out += _results_section(f, d)
    out += ["## Official reference numbers", "",
            "From the DeAOT model zoo (V100, fp32, multi-object, 1.3x480p). The measured columns are CPU numbers "
            "of the machine above and are not comparable in absolute terms; the ratios to DeAOTT show whether the "
            "variants' relative cost matches.", "", reference_table(datasets[0][1]["results"]), ""]
    if not has_gpu:
        out += ["## GPU", "", "GPU: not measured yet; run", "",
                "```bash", GPU_COMMAND, "```", "",
                "to fill it (all 12 variants, 480p/1080p, 2/20 objects, 50/2000 frames, tracker in fp32/fp16/bf16 "
                "with label agreement vs fp32, e2e in fp32/fp16; many hours on one GPU: narrow it with "
                "`--variants`, `--resolutions`, `--objects`, `--frames`, `--mode`, `--precision`, which filter the "
                "preset). Put official checkpoints in a folder and pass `--weights-dir` to make the fp16/bf16 "
                "label agreement meaningful.", ""]
    out += ["## Reproduce", "", "```bash",
            "bash bench/run_cpu_matrix.sh            # the CPU preset (~25 min on one core), the fp32/bf16 runs (~20 min) + this file",
            "python bench/bench_speed.py --quick     # smoke test (2 runs)",
            "python bench/bench_speed.py --help", "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="JSON files from bench_speed.py --json")
    parser.add_argument("-o", "--output", default="docs/benchmarks/measurements.md")
    parser.add_argument("--findings", help="a Markdown file inserted after the method section")
    args = parser.parse_args(argv)
    findings = Path(args.findings).read_text() if args.findings else None
    Path(args.output).write_text(build(args.results, findings))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The CPU benchmark matrix (~25 min on one shared core), then BENCHMARKS.md.
#   bash bench/run_cpu_matrix.sh [extra bench_speed.py flags for the main preset]
# 1. --preset cpu: all 12 variants (tracker, 480p, 2 objects, 10 or 6 frames); DeAOTT (10 frames)
#    and R50_DeAOTL (6 frames): tracker + end to end at 480p/1080p with 2/20 objects; DeAOTT long
#    runs at 240p (1000 frames capped, 300 uncapped, 300 end to end capped) for memory over time.
# 2. tracker vs end to end interleaved (2 repeats) -- on a contended machine the only fair comparison.
# 3. CPU autocast precisions (fp32 / bf16 / fp16).
# 4. fp32 vs bf16 (channels-last) at 2 threads, 480p (tracker + end to end) and 1080p, and DeAOTT bf16
#    over 2000 frames at 480p with the long-term cap (~20 min on 2 idle cores with AMX).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export FIFTYONE_DO_NOT_TRACK=true
R=bench/results
mkdir -p "$R"
NOTE=${BENCH_NOTE:-"--threads 1 on $(nproc) vCPUs"}
NOTE2=${BENCH_NOTE:-"--threads 2 on $(nproc) vCPUs"}
"$PY" bench/bench_speed.py --preset cpu --threads 1 --device cpu --json "$R/cpu.json" --note "$NOTE" "$@"
"$PY" bench/bench_speed.py --variants DeAOTT --resolutions 480p,1080p --objects 2 --frames 10 --mode both \
    --threads 1 --device cpu --repeat 2 --json "$R/cpu_paired.json" \
    --note "tracker and e2e interleaved (round-robin, 2 repeats); $NOTE"
"$PY" bench/bench_speed.py --variants DeAOTT,R50_DeAOTL --resolutions 480p --objects 2 --frames 10 --mode tracker \
    --precision fp32,bf16,fp16 --threads 1 --device cpu --json "$R/cpu_precision.json" \
    --note "CPU autocast precisions (random weights: label agreement not meaningful); $NOTE"
T2="--threads 2 --device cpu --precision fp32,bf16 --objects 2 --frames 10"
"$PY" bench/bench_speed.py --variants DeAOTT --resolutions 480p --mode both $T2 --json "$R/cpu_amx.json" --note "$NOTE2"
"$PY" bench/bench_speed.py --variants R50_DeAOTL --resolutions 480p --mode tracker $T2 --json "$R/cpu_amx_r50.json" \
    --note "$NOTE2"
"$PY" bench/bench_speed.py --variants DeAOTT,R50_DeAOTL --resolutions 1080p --mode tracker $T2 \
    --json "$R/cpu_amx_1080p.json" --note "$NOTE2"
"$PY" bench/bench_speed.py --variants DeAOTT --resolutions 480p --objects 2 --frames 2000 --mode tracker --precision bf16 \
    --long-term-gap 5 --max-long-term-frames 10 --threads 2 --device cpu --json "$R/cpu_long_480p.json" --note "$NOTE2"
files=("$R/cpu.json" "$R/cpu_paired.json" "$R/cpu_precision.json" "$R/cpu_amx.json" "$R/cpu_amx_r50.json"
       "$R/cpu_amx_1080p.json" "$R/cpu_long_480p.json")
[ -f "$R/gpu.json" ] && files+=("$R/gpu.json")
findings=()
[ -f "$R/findings.md" ] && findings=(--findings "$R/findings.md")
"$PY" bench/make_benchmarks_md.py "${files[@]}" "${findings[@]}" -o docs/benchmarks/measurements.md

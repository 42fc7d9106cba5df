#!/usr/bin/env bash
# Issue 19 on a lent GPU, one prepared command for the device tool (15 minutes of device time per
# task, machine start included), e.g.
#   run(command="bash bench/gpu_issue19.sh", timeout_s=540, carry=[".sam2-pkgs"])
# 1. the tracker alone on CUDA: DeAOTT and R50_DeAOTL at 480x854, 2 and 44 objects, fp32 and bf16,
#    identity groups batched and one by one (bench_tracker.py, random weights);
# 2. SAM 2.1 tiny / base-plus against DeAOTT / R50_DeAOTL (bench_sam2.py) at 1, 2, 5, 10, 20
#    objects, if the `sam2` package is importable: it is not a dependency and the device cannot
#    download it, so install it here into .sam2-pkgs (gitignored) and carry that folder:
#      SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install --target .sam2-pkgs --no-deps \
#          sam2 hydra-core omegaconf iopath antlr4-python3-runtime==4.9.3 portalocker
# The device image has python3 with torch, numpy, OpenCV and Pillow (no FiftyOne, no project venv;
# neither script needs them). Results land in $OUT (or ./gpu_issue19 here): tracker.jsonl,
# sam2_gpu.jsonl and the logs; copy them to bench/results/ and add the rows to BENCHMARKS.md.
# Knobs (environment): PY (python3), FRAMES (tracker frames, 30), SAM2_FRAMES (30), DEVICE (cuda).
# A CPU dry run:  PY=.venv/bin/python DEVICE=cpu FRAMES=2 SAM2_FRAMES=3 SIZE=64x96 OBJECTS="1" \
#   MODELS="DeAOTT" OUT=/tmp/g19 bash bench/gpu_issue19.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu_issue19}
FRAMES=${FRAMES:-30}
SAM2_FRAMES=${SAM2_FRAMES:-30}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-480x854}
OBJECTS=${OBJECTS:-"1 2 5 10 20"}
MODELS=${MODELS:-"DeAOTT R50_DeAOTL"}
export PYTHONUNBUFFERED=1 FIFTYONE_DO_NOT_TRACK=true PYTHONPATH="$PWD:$PWD/.sam2-pkgs${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

for precision in fp32 bf16; do
  for objects in 2 44; do
    for batch in --batch-groups --no-batch-groups; do
      [ "$objects" = 2 ] && [ "$batch" = --no-batch-groups ] && continue  # one group: the same path
      timeout 120 $PY bench/bench_tracker.py --models $MODELS --size "$SIZE" --objects "$objects" \
        --frames "$FRAMES" --warmup 3 --device "$DEVICE" --precision "$precision" $batch \
        2>>"$OUT/tracker.log" | grep '^{' >> "$OUT/tracker.jsonl" || echo "tracker $precision $objects $batch failed" >> "$OUT/tracker.log"
    done
  done
done

if $PY -c "import sam2" 2>/dev/null; then
  # shellcheck disable=SC2086
  timeout 360 $PY bench/bench_sam2.py --device "$DEVICE" --size "$SIZE" --frames "$SAM2_FRAMES" --objects $OBJECTS \
    --jsonl "$OUT/sam2_gpu.jsonl" --note "lent GPU" --timeout 120 > "$OUT/sam2.log" 2>&1 || echo "sam2 run ended early" >> "$OUT/sam2.log"
else
  echo "sam2 is not importable: carry .sam2-pkgs (see the top of this script)" > "$OUT/sam2.log"
fi
cat "$OUT/tracker.jsonl" 2>/dev/null | head -40
tail -20 "$OUT/sam2.log"

#!/usr/bin/env bash
# Stage 5 of the demo checkpoint on a lent GPU, then its held-out J&F: one prepared command for
# the device tool (15 minutes of device time per task, machine start included), e.g.
#   run(command="bash bench/gpu_train_stage5.sh", timeout_s=600)
# The device image has python3 with torch, torchvision, OpenCV, numpy and tqdm (no FiftyOne, no
# project venv: deaot_core.train and bench_synthetic_jf.py need nothing else). Everything lands
# in $OUT (or ./gpu_stage5 here): train_log.json, loss_curve.png, the fp16 export
# deaot_t_synthetic_stage5.pth (14 MB) and synthetic_jf_stage5.json (both checkpoints' J&F).
#
# Knobs (environment): MINUTES (training time budget, 5), SIZE (crop, 225x225), BATCH (16),
# SEQ (frames per sample, 8), WORKERS (data processes, cores - 2), CLIPS (held-out clips, 20),
# FRAMES (per held-out clip, 40), DEVICE (cuda), PY (python3), INIT (deaot_core/weights/deaot_t_synthetic.pth,
# stage 4). The stage-4 recipe (2-5 objects, slots 1-5; for all ten slots see bench/gpu_train_slots.sh).
# tests/test_train.py runs it on the CPU with tiny values.
# A CPU dry run of the whole script:  PY=.venv/bin/python DEVICE=cpu MINUTES=0.2 SIZE=65x65 \
#   BATCH=1 SEQ=3 WORKERS=1 CLIPS=2 OUT=/tmp/s5 bash bench/gpu_train_stage5.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu_stage5}
MINUTES=${MINUTES:-5}
SIZE=${SIZE:-225x225}
BATCH=${BATCH:-16}
SEQ=${SEQ:-8}
DEVICE=${DEVICE:-cuda}
CLIPS=${CLIPS:-20}
FRAMES=${FRAMES:-40}
INIT=${INIT:-deaot_core/weights/deaot_t_synthetic.pth}
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
export PYTHONUNBUFFERED=1 FIFTYONE_DO_NOT_TRACK=true
mkdir -p "$OUT"
RUN=$(mktemp -d)  # the run folder (last.pth: ~115 MB resume state) stays out of $OUT
trap 'rm -rf "$RUN"' EXIT
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch, torchvision, cv2; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)"

# The main stage from stage 4 (memory from the model's own predictions throughout), AMP (bf16)
# on CUDA, with the crop, batch and sequence length a GPU affords; the LR and EMA schedules
# follow the time budget.
"$PY" -m deaot_core.train --model DeAOTT --data synthetic --init "$INIT" --encoder-lr-ratio 1.0 \
    --seq-len "$SEQ" --seq-training-start 0 --objects 2-5 --id-shuffle 0 --size "$SIZE" --batch-size "$BATCH" --minutes "$MINUTES" \
    --device "$DEVICE" --workers "$WORKERS" --seed 5 --half --no-progress --log-every 20 \
    --out "$RUN" --export "$OUT/deaot_t_synthetic_stage5.pth"
cp "$RUN/train_log.json" "$OUT/train_log.json"
cp "$RUN/loss_curve.png" "$OUT/loss_curve.png" 2>/dev/null || true

# Held-out J&F (the issue's benchmark): stage 4 and stage 5 on the same clips and device.
"$PY" bench/bench_synthetic_jf.py --checkpoint "$INIT" "$OUT/deaot_t_synthetic_stage5.pth" --clips "$CLIPS" \
    --frames "$FRAMES" --device "$DEVICE" --no-random > "$OUT/synthetic_jf_stage5.json"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
log = json.loads((out / "train_log.json").read_text())
print("training:", json.dumps(log.get("summary", {}), indent=1))
for key, result in json.loads((out / "synthetic_jf_stage5.json").read_text())["results"].items():
    print(f"{key}: J&F {result['summary']['J&F-Mean']:.4f} ({result['sec_per_frame']} s/frame)")
EOF

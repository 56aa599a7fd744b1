#!/usr/bin/env bash
# The speed table on a CUDA machine, in one run (about 6 minutes on one H100), printed as one table:
#   extract against the bare forward (and the bare forward + a bare encode and write of the same bytes),
#   the writer pool alone at 1, 2, 4 and 8 encoder threads (and every core but one),
#   train-blocks against the bare LIT step,
#   reading the store (GB/s) against what the student consumes.
#
#   bash benchmarks/gpu_check.sh [CIFAR_JPEG_DIR] [OUT_DIR]      # run it
#   bash benchmarks/gpu_check.sh --dry-run                      # check it here: the commands, and that each parses
#
# CIFAR_JPEG_DIR: the shared JPEGs unpacked (default: runs/data/cifar10-jpeg, unpacked from
# ../shared/data/cifar10-jpeg.tar.gz when missing). The teacher is ../shared/teachers/cifar10_resnet56.pt.
# Results land in OUT_DIR (default: $OUT when set, else benchmarks/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=1
    shift
fi
CIFAR=${1:-runs/data/cifar10-jpeg}
RESULTS=${2:-${OUT:-benchmarks/results/gpu}}
TEACHER=../shared/teachers/cifar10_resnet56.pt
PY=${PYTHON:-python}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
CORES=$(nproc)
THREADS="2,4,8"
(( CORES - 1 > 8 )) && THREADS="$THREADS,$((CORES - 1))"

LITCACHE=$(dirname "$PY")/litcache
[[ -x $LITCACHE ]] || LITCACHE=litcache
STORE=runs/gpu-check/read-store.zarr  # a store: kept out of git (runs/), never under benchmarks/results
EXTRACT_READ_STORE="$LITCACHE extract pipelines/cifar10_resnet.py --teacher $TEACHER --out $STORE --limit 16384 --views 2 --resume -q"
COMMANDS=(
    "$PY benchmarks/speed_bench.py --cifar-dir $CIFAR --teacher56 $TEACHER --samples 32768 --train-samples 16384 --repeats 3 --cases extract,train-blocks --json $RESULTS/speed.json"
    "$PY benchmarks/writer_bench.py --cifar-dir $CIFAR --teacher $TEACHER --rows 16384 --threads $THREADS --repeats 3 --json $RESULTS/writer.json"
    "$PY benchmarks/read_bench.py --store $STORE --batch-size 128 --workers 0,4 --demand-json $RESULTS/speed.json --json $RESULTS/read.json"
)

if [[ $DRY == 1 ]]; then
    for script in speed_bench writer_bench read_bench; do
        "$PY" benchmarks/$script.py --help > /dev/null
    done
    "$LITCACHE" extract --help > /dev/null
    printf '%s\n' "${COMMANDS[0]}" "${COMMANDS[1]}" "$EXTRACT_READ_STORE" "${COMMANDS[2]}"
    echo "dry run: every command parses; nothing was run"
    exit 0
fi

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'Error: no CUDA device here; use --dry-run')"
mkdir -p "$RESULTS" runs/gpu-check
if [[ ! -d $CIFAR/train ]]; then
    mkdir -p "$CIFAR" && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "$CIFAR"
fi
export LITCACHE_CIFAR10_DIR=$(cd "$CIFAR" && pwd) LITCACHE_CIFAR_TEACHER=56 LITCACHE_CIFAR10_TRAIN_SUBSET=16384
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RESULTS/device.txt"
eval "${COMMANDS[0]}" | tee "$RESULTS/speed.txt"
eval "${COMMANDS[1]}" | tee "$RESULTS/writer.txt"
eval "$EXTRACT_READ_STORE"
eval "${COMMANDS[2]}" | tee "$RESULTS/read.txt"

"$PY" - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path

results = Path(sys.argv[1])
speed = json.loads((results / "speed.json").read_text())["results"]
writer = json.loads((results / "writer.json").read_text())
read = json.loads((results / "read.json").read_text())["results"]
device = (results / "device.txt").read_text().strip()
rows = []
for case in speed:
    if case["case"].startswith("extract"):
        rows.append((case["case"], f"{case['litcache_rows_per_s']:,.0f} rows/s",
                     f"bare forward {case['bare_rows_per_s']:,.0f} rows/s",
                     f"{case['ratio_vs_forward']:.2f} (forward + write: {case['ratio']:.2f})"))
    else:
        ref = case.get("bare_rows_per_s")
        rows.append((case["case"], f"{case['litcache_rows_per_s']:,.0f} rows/s",
                     f"bare step {ref:,.0f} rows/s" if ref else "-", f"{case.get('ratio', float('nan')):.2f}"))
med = writer["median_s"]
for key in sorted((k for k in med if k.startswith("litcache")), key=lambda k: int(k.split()[1])):
    threads = key.split()[1]
    rows.append((f"writer alone, {threads} threads", f"{writer['rows'] / med[key]:,.0f} rows/s",
                 f"bare {writer['rows'] / med['bare ' + threads]:,.0f} rows/s",
                 f"{med[key] / med['bare ' + threads]:.2f} (scaling {med['litcache 1'] / med[key]:.2f}x)"))
for r in read:
    demand = r["demand_rows_per_s"]
    rows.append((f"read, {r['workers']} loader workers", f"{r['gb_per_s']:.2f} GB/s",
                 f"student needs {demand:,.0f} rows/s" if demand else "-",
                 f"{r['rows_per_s'] / demand:.2f}" if demand else "-"))
print(f"\nGPU check on {device}")
print(f"| {'case':34s} | {'litcache':18s} | {'reference':30s} | {'ratio':30s} |")
print(f"|{'-' * 36}|{'-' * 20}|{'-' * 32}|{'-' * 32}|")
for case, mine, ref, ratio in rows:
    print(f"| {case:34s} | {mine:18s} | {ref:30s} | {ratio:30s} |")
EOF

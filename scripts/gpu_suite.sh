#!/usr/bin/env bash
# The GPU suite on a fresh GPU host: installs (the README's setup), then `python -m bench.gpu`:
# STT and TTS engines with real-size random weights at 1 to 256 streams, the voice loop at 20, 40
# and 64 sessions. Aim: under 8 minutes in all on 16 cores and one large GPU.
# Usage: scripts/gpu_suite.sh [--quick]     (--quick: the same suite, tiny, on a CPU)
# The JSON goes to stdout's last line and to $OUT/gpu-suite.json ($OUT: the current directory
# when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
bash scripts/setup.sh
installed=$(date +%s)
out="${OUT:-.}/gpu-suite.json"
budget=$(( 8 * 60 - (installed - started) - 20 ))
if (( budget < 120 )); then budget=120; fi
echo "[gpu suite] installed in $(( installed - started )) s; benches get ${budget} s" >&2
.venv/bin/python -m bench.gpu --budget-s "$budget" --out "$out" "$@"
echo "[gpu suite] done in $(( $(date +%s) - started )) s; JSON in $out" >&2

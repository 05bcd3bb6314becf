#!/usr/bin/env bash
# The GPU suite on a fresh GPU host: installs (the README's setup), then `python -m bench.gpu`:
# STT and TTS engines with real-size random weights at 1 to 256 streams, the voice loop at 20, 40
# and 64 sessions. Aim: under 8 minutes in all on 16 cores and one large GPU.
#
# Usage: scripts/gpu_suite.sh [--quick]     (--quick: the same suite, tiny, on a CPU)
#        JARVIS_WHEELS=DIR scripts/gpu_suite.sh
#            a GPU host with no package registry but its own python3 with torch and CUDA: the
#            wheels in DIR (the engines' other packages) go to a temporary folder beside it and
#            only the engine benches run (the voice loop needs LiveKit, PostgreSQL and Redis).
#        scripts/gpu_suite.sh --download-wheels DIR [PYTHON_VERSION]
#            fill DIR, on a machine with a registry, for such a host (default Python 3.12),
#            at the versions deploy/requirements/runtime.lock pins.
# The JSON goes to stdout's last line and to $OUT/gpu-suite.json ($OUT: the current directory
# when unset); the benches' progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the engine benches import beyond torch, numpy, msgpack, einops, sentencepiece, safetensors
# and huggingface_hub, which a CUDA image for PyTorch already holds.
ENGINE_WHEELS=(moshi sphn pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv websockets)

if [[ "${1:-}" == "--download-wheels" ]]; then
  dir=${2:?"usage: $0 --download-wheels DIR [PYTHON_VERSION]"}
  version=${3:-3.12}
  mkdir -p "$dir"
  for name in "${ENGINE_WHEELS[@]}"; do
    pin=$(grep -i -E "^${name}==" deploy/requirements/runtime.lock) || { echo "no pin for $name in runtime.lock" >&2; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$dir" "$pin"
  done
  echo "[gpu suite] wheels for Python $version in $dir: $(ls "$dir" | wc -l) files" >&2
  exit 0
fi

started=$(date +%s)
if [[ -n "${JARVIS_WHEELS:-}" ]]; then
  site=$(mktemp -d -t jarvis-site-XXXXXX)
  trap 'rm -rf "$site"' EXIT
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$JARVIS_WHEELS"/*.whl
  export PYTHONPATH="$site:$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
  python=python3
  benches=stt,tts
else
  bash scripts/setup.sh
  python=.venv/bin/python
  benches=stt,tts,voice_loop
fi
installed=$(date +%s)
out="${OUT:-.}/gpu-suite.json"
budget=$(( ${JARVIS_GPU_BUDGET_S:-480} - (installed - started) - 20 ))
if (( budget < 120 )); then budget=120; fi
echo "[gpu suite] installed in $(( installed - started )) s; benches ($benches) get ${budget} s" >&2
"$python" -m bench.gpu --budget-s "$budget" --benches "$benches" --out "$out" "$@"
echo "[gpu suite] done in $(( $(date +%s) - started )) s; JSON in $out" >&2

#!/usr/bin/env bash
# Install everything JARVIS needs on a fresh Debian machine; seconds when already done.
#   Debian packages, the LiveKit server (from the Go module proxy), .venv with the project,
#   the kiosk's npm packages and build, the Next.js example's npm cache, the demo's tutorial clips.
set -euo pipefail
cd "$(dirname "$0")/.."

LIVEKIT_VERSION=1.13.5
APT_PACKAGES=(redis-server postgresql postgresql-client espeak-ng sox chromium ca-certificates ffmpeg iproute2)
# deploy/ tests: promtool checks and unit-tests the alert rules (prometheus: 19 MB); nginx -t checks the
# TLS proxy config (nginx + its stream module: under 1 MB); systemd-analyze verifies the units.
APT_PACKAGES+=(prometheus nginx libnginx-mod-stream systemd)
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian packages
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. LiveKit server, built from source by the Go toolchain, kept project-local
mkdir -p .tools
if ! .tools/livekit-server --version 2>/dev/null | grep -q "$LIVEKIT_VERSION"; then
  log "building livekit-server v$LIVEKIT_VERSION (go install, a few minutes the first time)"
  gobin=$(mktemp -d)
  GOBIN="$gobin" go install "github.com/livekit/livekit-server/cmd/server@v$LIVEKIT_VERSION"
  mv "$gobin/server" .tools/livekit-server
  rmdir "$gobin"
fi

# 3. Python: .venv with the project (editable) and its dev extras. Every package production runs
#    is held at the version deploy/requirements/runtime.lock pins (what the tests ran, what the
#    hosts install): without it a fresh clone took whatever PyPI published since.
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
stamp=.venv/.jarvis-setup-stamp
want=$(cat pyproject.toml deploy/requirements/runtime.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages (torch is large: about a minute the first time)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c deploy/requirements/runtime.lock -e ".[dev]"
  echo "$want" > "$stamp"
fi

# 4. Kiosk (TypeScript): npm packages from the lock file, then the page build
if [ -f kiosk/package-lock.json ]; then
  kstamp=kiosk/node_modules/.jarvis-setup-stamp
  kwant=$(cat kiosk/package-lock.json kiosk/package.json | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$kstamp" 2>/dev/null)" != "$kwant" ]; then
    log "installing kiosk npm packages"
    (cd kiosk && npm ci --no-audit --no-fund --loglevel=error)
    echo "$kwant" > "$kstamp"
  fi
  if [ -n "$(find kiosk/src kiosk/page kiosk/index.html -newer kiosk/dist/.built 2>/dev/null | head -1)" ] || [ ! -f kiosk/dist/.built ]; then
    if grep -q '"build"' kiosk/package.json; then
      log "building the kiosk page"
      (cd kiosk && npm run --silent build) && touch kiosk/dist/.built
    fi
  fi
fi

# 5. The gym's Next.js app (kiosk/examples/nextjs): its npm packages go to a project-local cache,
#    from which tests/browser/test_kiosk_package.py installs a fresh app offline (its node_modules
#    are not needed here: 400 MB, removed).
if [ -f kiosk/examples/nextjs/package-lock.json ]; then
  nstamp=.tools/npm-cache/.nextjs-example-stamp
  nwant=$(sha256sum kiosk/examples/nextjs/package-lock.json | cut -d' ' -f1)
  if [ "$(cat "$nstamp" 2>/dev/null)" != "$nwant" ]; then
    log "caching the Next.js example's npm packages (.tools/npm-cache)"
    mkdir -p .tools/npm-cache
    (cd kiosk/examples/nextjs && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --cache ../../../.tools/npm-cache)
    rm -rf kiosk/examples/nextjs/node_modules
    echo "$nwant" > "$nstamp"
  fi
fi

# 6. The demo gyms' tutorial clips: jarvis/sql/seed/demo.sql's catalogue points at
#    /videos/<gym>/<exercise>.mp4, which the kiosk demo server serves from .tools/demo-videos.
#    One 6 s test pattern (H.264 + yuv420p: plays in any kiosk browser), linked under every name.
videos=.tools/demo-videos
if [ ! -s "$videos/clip.mp4" ]; then
  log "making the demo tutorial clip (ffmpeg)"
  mkdir -p "$videos"
  ffmpeg -loglevel error -y -f lavfi -i "testsrc2=size=640x360:rate=25:duration=6" \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p -movflags +faststart "$videos/clip.mp4"
fi
for gym in energie-lyon-part-dieu atlas-bordeaux-chartrons; do
  mkdir -p "$videos/$gym"
  for exercise in squat developpe-couche souleve-de-terre tractions fentes; do
    ln -f "$videos/clip.mp4" "$videos/$gym/$exercise.mp4"
  done
done
log "ready"

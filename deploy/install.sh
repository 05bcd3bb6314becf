#!/usr/bin/env bash
# One command per host: deploy/install.sh --roles livekit,engines,worker,token [options] (see --help).
# Idempotent: a second run with the same options changes nothing and says "0 changed".
set -euo pipefail
exec python3 "$(dirname "$0")/install.py" "$@"

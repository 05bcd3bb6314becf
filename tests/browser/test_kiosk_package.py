"""The kiosk package's own unit tests (node's test runner: state machine, show_video payload
validation, reconnect policy, transcript, token API client, legacy fallback, demo gym backend),
run by pytest so the README's single test command covers them; and the package as a gym's
Next.js app gets it: `npm pack`, installed into a fresh app, type-checked against. No browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from jarvis_local.browser import KIOSK, REPO

NEXTJS_EXAMPLE = KIOSK / "examples" / "nextjs"
# Filled by scripts/setup.sh (npm ci of the example app): nothing is downloaded at test time.
NPM_CACHE = REPO / ".tools" / "npm-cache"
CACHE_STAMP = NPM_CACHE / ".nextjs-example-stamp"

# Type errors the gym would make: each must be reported, which proves the app sees our types
# (with no types, or `any`, every @ts-expect-error below would itself be an error).
MISUSE = """\
import { JarvisKiosk, fallbackReasonOf, type LegacyVoiceProvider } from "@jarvis/kiosk";
import { useJarvisKiosk } from "@jarvis/kiosk/react";
import { JarvisTokenClient } from "@jarvis/kiosk/server";

const legacy: LegacyVoiceProvider = { start: async () => {}, stop: async () => {} };
// @ts-expect-error agentTimeoutMs is a number of milliseconds
new JarvisKiosk({ agentTimeoutMs: "8s", legacy });
// @ts-expect-error a provider needs stop()
const broken: LegacyVoiceProvider = { start: async () => {} };
// @ts-expect-error the reason is one of the fallback reasons, not any string
const reason: "jarvis_disabled" | "over_capacity" = fallbackReasonOf({ code: "x" });
// @ts-expect-error the token client needs the gym key
new JarvisTokenClient({ baseUrl: "http://jarvis" });
export const hook: typeof useJarvisKiosk = useJarvisKiosk;
export { broken, reason };
"""


def run(cmd: list[str], cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)


def test_kiosk_package_unit_tests_pass() -> None:
    run_ = run(["npm", "test", "--silent"], KIOSK, timeout_s=240)
    report = run_.stdout + run_.stderr
    assert run_.returncode == 0, report[-4000:]
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", report, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 40, report[-2000:]
    assert failed and int(failed.group(1)) == 0, report[-2000:]


@pytest.mark.requires(CACHE_STAMP.exists(), reason="the Next.js example's npm cache is missing: run `make setup`")
@pytest.mark.timeout(600)  # ~60 s alone; tsc over next's types took up to 120 s on a loaded 2-core box
def test_packed_kiosk_installs_into_a_fresh_nextjs_app_that_type_checks(tmp_path: Path) -> None:
    """npm pack → a fresh Next.js app (next, react, typescript from the setup's npm cache, offline)
    → npm install the tarball → tsc --noEmit on the example routes and screen, against the
    package's own .d.ts files."""
    started = time.monotonic()
    packed = run(["npm", "pack", "--json", "--pack-destination", str(tmp_path)], KIOSK)
    assert packed.returncode == 0, packed.stderr[-3000:]
    info = json.loads(packed.stdout[packed.stdout.index("[") :])[0]
    files = {entry["path"] for entry in info["files"]}
    for needed in ("dist/src/index.d.ts", "dist/src/index.js", "dist/src/react.d.ts", "dist/src/server.d.ts",
                   "dist/src/legacy.d.ts", "dist/src/openai-realtime.js", "package.json"):
        assert needed in files, f"{needed} is not in the package: {sorted(files)}"
    assert not any(f.startswith(("dist/test/", "dist/page/", "page/", "server/", "test/")) for f in files), files
    manifest = json.loads((KIOSK / "package.json").read_text("utf-8"))
    assert "private" not in manifest
    assert manifest["exports"]["./react"]["types"] == "./dist/src/react.d.ts"
    pack_s = time.monotonic() - started

    app = tmp_path / "gym-app"
    app.mkdir()
    for name in ("package.json", "package-lock.json", "tsconfig.json", "next-env.d.ts"):
        shutil.copy(NEXTJS_EXAMPLE / name, app / name)
    shutil.copytree(NEXTJS_EXAMPLE / "app", app / "app")
    (app / "app" / "misuse.ts").write_text(MISUSE, "utf-8")
    installed = run(
        ["npm", "install", "--offline", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error",
         "--cache", str(NPM_CACHE), str(tmp_path / info["filename"])],
        app,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    dependencies = json.loads((app / "package.json").read_text("utf-8"))["dependencies"]
    assert dependencies["@jarvis/kiosk"].startswith("file:"), dependencies
    assert (app / "node_modules" / "@jarvis" / "kiosk" / "dist" / "src" / "index.d.ts").exists()
    assert not (app / "node_modules" / "@jarvis" / "kiosk" / "src" / "kiosk.ts").is_symlink()
    install_s = time.monotonic() - started - pack_s

    checked = run([str(app / "node_modules" / ".bin" / "tsc"), "--noEmit", "-p", "."], app)
    assert checked.returncode == 0, checked.stdout[-4000:]
    print(f"npm pack {pack_s:.0f} s ({info['size']} bytes, {len(files)} files), offline install {install_s:.0f} s, "
          f"tsc --noEmit {time.monotonic() - started - pack_s - install_s:.0f} s")

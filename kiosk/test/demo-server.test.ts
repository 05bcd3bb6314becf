import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

// dist/test/ → the package root
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

interface Seen {
  authorization: string | undefined;
  body: unknown;
}

/**
 * A stand-in token service answering like the real one for the demo badges, and a stand-in of
 * the previous provider's secret route (`POST /v1/realtime/sessions`).
 */
function fakeTokenService(seen: Seen[]): Server {
  return createServer((request: IncomingMessage, response) => {
    let raw = "";
    request.on("data", (chunk: Buffer) => (raw += chunk.toString()));
    request.on("end", () => {
      const body = JSON.parse(raw) as { badge_id: string; kiosk_id: string };
      seen.push({ authorization: request.headers.authorization, body });
      const reply = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
        response.writeHead(status, { "content-type": "application/json", ...headers });
        response.end(JSON.stringify(payload));
      };
      if (request.url === "/v1/realtime/sessions") {
        if (request.headers.authorization !== "Bearer sk-legacy") return reply(401, { error: { message: "bad key" } });
        return reply(200, { id: "sess_1", client_secret: { value: "ek_kiosk", expires_at: 0 } });
      }
      if (request.headers.authorization !== "Bearer demo-key-lyon-part-dieu") return reply(401, { detail: "bad key" });
      if (body.badge_id.startsWith("BDX-")) return reply(403, { detail: "badge of another gym" });
      if (body.badge_id === "LYON-9999") return reply(429, { detail: "slow down" }, { "retry-after": "7" });
      if (body.badge_id === "LYON-0007") return reply(403, { code: "jarvis_disabled", detail: "use the current provider" });
      if (body.badge_id === "LYON-0008") {
        return reply(503, { code: "over_capacity", detail: "full" }, { "retry-after": "5" });
      }
      reply(201, {
        session_id: "s-1",
        room: "jarvis-s-1",
        token: "lk-token",
        livekit_url: "ws://127.0.0.1:7880",
        expires_at: "2026-11-26T16:00:00Z",
        member_first_name: "Camille",
      });
    });
  });
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

describe("demo gym backend (server/demo-server.mjs)", () => {
  const seen: Seen[] = [];
  const tokenService = fakeTokenService(seen);
  let demo: ChildProcess;
  let base = "";
  const videos = mkdtempSync(join(tmpdir(), "kiosk-videos-"));
  mkdirSync(join(videos, "energie-lyon-part-dieu"));
  writeFileSync(join(videos, "energie-lyon-part-dieu", "squat.mp4"), "not really a video");

  before(async () => {
    const tokenPort = await listen(tokenService);
    demo = spawn(process.execPath, [join(root, "server", "demo-server.mjs")], {
      env: {
        ...process.env,
        JARVIS_TOKEN_SERVICE_URL: `http://127.0.0.1:${tokenPort}`,
        JARVIS_KIOSK_PORT: "0",
        JARVIS_DEMO_GYM_KEY: "demo-key-lyon-part-dieu",
        JARVIS_DEMO_VIDEOS_DIR: videos,
        JARVIS_DEMO_LEGACY_ENDPOINT: `http://127.0.0.1:${tokenPort}/v1/realtime`,
        JARVIS_DEMO_LEGACY_API_KEY: "sk-legacy",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    base = await new Promise<string>((resolve, reject) => {
      demo.stdout!.on("data", (chunk: Buffer) => {
        const match = /KIOSK_URL=(\S+)/.exec(chunk.toString());
        if (match) resolve(match[1]!.replace(/\/$/, ""));
      });
      demo.on("exit", (code) => reject(new Error(`demo server exited with ${code}`)));
    });
  });

  after(() => {
    demo.kill("SIGTERM");
    tokenService.close();
  });

  const post = (badge: unknown) =>
    fetch(`${base}/api/kiosk-session`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ badge_id: badge }),
    });

  it("gets a session for a Lyon badge with the gym key, which never reaches the browser", async () => {
    const response = await post("LYON-0001");
    assert.equal(response.status, 201);
    const body = (await response.json()) as Record<string, string>;
    assert.equal(body["token"], "lk-token");
    assert.equal(body["member_first_name"], "Camille");
    assert.ok(!JSON.stringify(body).includes("demo-key"));
    const last = seen.at(-1)!;
    assert.equal(last.authorization, "Bearer demo-key-lyon-part-dieu");
    assert.deepEqual(last.body, { badge_id: "LYON-0001", kiosk_id: "kiosk-accueil" });
  });

  it("passes another gym's badge refusal (403) to the page as a typed error", async () => {
    const response = await post("BDX-0001");
    assert.equal(response.status, 403);
    assert.deepEqual(await response.json(), { code: "forbidden", detail: "badge of another gym" });
  });

  it("passes jarvis_disabled on, for the page to fall back", async () => {
    const disabled = await post("LYON-0007");
    assert.equal(disabled.status, 403);
    assert.deepEqual(await disabled.json(), { code: "jarvis_disabled", detail: "use the current provider" });
  });

  it("mints the previous provider's client secret with the key it holds, never showing the key", async () => {
    const response = await fetch(`${base}/api/legacy-session`, { method: "POST" });
    assert.equal(response.status, 201);
    const body = (await response.json()) as Record<string, string>;
    assert.equal(body["value"], "ek_kiosk");
    assert.equal(body["model"], "gpt-4o-mini-realtime-preview");
    assert.ok(!JSON.stringify(body).includes("sk-legacy"));
  });

  it("serves the tutorial clips under /videos/ and nothing outside their folder", async () => {
    const clip = await fetch(`${base}/videos/energie-lyon-part-dieu/squat.mp4`);
    assert.equal(clip.status, 200);
    assert.equal(clip.headers.get("content-type"), "video/mp4");
    assert.equal(await clip.text(), "not really a video");
    assert.equal((await fetch(`${base}/videos/..%2F..%2Fpackage.json`)).status, 404);
    assert.equal((await fetch(`${base}/videos/energie-lyon-part-dieu/absent.mp4`)).status, 404);
  });

  it("keeps Retry-After when the token service rate-limits", async () => {
    const response = await post("LYON-9999");
    assert.equal(response.status, 429);
    assert.equal(response.headers.get("retry-after"), "7");
  });

  it("tells the page the service is unavailable (503) when the token service is down", async () => {
    const down = spawn(process.execPath, [join(root, "server", "demo-server.mjs")], {
      env: { ...process.env, JARVIS_TOKEN_SERVICE_URL: "http://127.0.0.1:9", JARVIS_KIOSK_PORT: "0" },
      stdio: ["ignore", "pipe", "ignore"],
    });
    try {
      const url = await new Promise<string>((resolve) => {
        down.stdout!.on("data", (chunk: Buffer) => {
          const match = /KIOSK_URL=(\S+)/.exec(chunk.toString());
          if (match) resolve(match[1]!);
        });
      });
      const response = await fetch(`${url}api/kiosk-session`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ badge_id: "LYON-0001" }),
      });
      assert.equal(response.status, 503);
      assert.equal(((await response.json()) as { code: string }).code, "unavailable");
    } finally {
      down.kill("SIGTERM");
    }
  });

  it("refuses a malformed badge before calling the token service", async () => {
    const before = seen.length;
    assert.equal((await post("../../etc/passwd")).status, 422);
    assert.equal((await post(42)).status, 422);
    assert.equal(seen.length, before);
  });

  it("lists the demo badges and does not serve files outside the page", async () => {
    const badges = (await (await fetch(`${base}/api/demo-badges`)).json()) as Array<{ badge_id: string }>;
    assert.deepEqual(
      badges.map((b) => b.badge_id),
      ["LYON-0001", "LYON-0002", "LYON-0004", "BDX-0001"],
    );
    assert.equal((await fetch(`${base}/..%2Fpackage.json`)).status, 404);
  });

  // Last: for Retry-After's 5 s every badge of this backend is sent to the previous provider.
  it("passes over_capacity (with Retry-After) on, and sends the next badges back at once while it lasts", async () => {
    const full = await post("LYON-0008");
    assert.equal(full.status, 503);
    assert.equal(full.headers.get("retry-after"), "5");
    assert.deepEqual(await full.json(), { code: "over_capacity", detail: "full" });
    const asked = seen.length;
    const next = await post("LYON-0001");
    assert.equal(next.status, 503);
    assert.ok(Number(next.headers.get("retry-after")) >= 1, "what is left of Retry-After");
    assert.deepEqual(await next.json(), { code: "over_capacity", detail: "full" });
    assert.equal(seen.length, asked, "the full token service was not asked again");
  });
});

#!/usr/bin/env node
// The demo "gym backend": serves the built kiosk page and the session route.
//
// POST /api/kiosk-session {badge_id} asks the JARVIS token service for a session with the
// gym's key, which stays here on the server, as the gym's Next.js route does in production
// (see examples/nextjs/app/api/kiosk-session/route.ts); a refusal is passed on as
// {code, detail}, and `jarvis_disabled` / `over_capacity` send the page to the previous provider.
// POST /api/legacy-session mints that provider's client secret (OpenAI Realtime protocol) with
// the key held here. GET /api/demo-badges lists the demo members' badges. GET /videos/<gym>/<clip>
// serves the demo gyms' tutorial clips (made by scripts/setup.sh with ffmpeg).
//
// Environment:
//   JARVIS_TOKEN_SERVICE_URL  token service base URL   (default http://127.0.0.1:8080)
//   JARVIS_DEMO_GYM_KEY       the demo gym's API key   (default demo-key-lyon-part-dieu)
//   JARVIS_DEMO_KIOSK_ID      this kiosk's id           (default kiosk-accueil)
//   JARVIS_KIOSK_HOST         listen address            (default 127.0.0.1)
//   JARVIS_KIOSK_PORT         listen port, 0 = any free (default 8090)
//   JARVIS_DEMO_VIDEOS_DIR    the tutorial clips        (default <repo>/.tools/demo-videos)
//   JARVIS_DEMO_LEGACY_ENDPOINT  the previous provider's Realtime API base URL (unset: no fallback;
//                                the chain's is https://api.openai.com/v1/realtime)
//   JARVIS_DEMO_LEGACY_API_KEY   its API key (server-side only)
//   JARVIS_DEMO_LEGACY_MODEL     its model                (default the seed's, gpt-4o-mini-realtime-preview)
// Prints "KIOSK_URL=<url>" on stdout once listening.
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";

import {
  createOpenAIRealtimeClientSecret,
  JarvisTokenClient,
  RealtimeSecretError,
  TokenApiError,
} from "../dist/src/server.js";
import { SEED_OPENAI_REALTIME } from "../dist/src/openai-realtime.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pageDir = join(root, "dist", "page");

const settings = {
  tokenServiceUrl: process.env.JARVIS_TOKEN_SERVICE_URL ?? "http://127.0.0.1:8080",
  gymKey: process.env.JARVIS_DEMO_GYM_KEY ?? "demo-key-lyon-part-dieu",
  kioskId: process.env.JARVIS_DEMO_KIOSK_ID ?? "kiosk-accueil",
  host: process.env.JARVIS_KIOSK_HOST ?? "127.0.0.1",
  port: Number(process.env.JARVIS_KIOSK_PORT ?? "8090"),
  videosDir: process.env.JARVIS_DEMO_VIDEOS_DIR ?? join(root, "..", ".tools", "demo-videos"),
  legacyEndpoint: process.env.JARVIS_DEMO_LEGACY_ENDPOINT ?? "",
  legacyApiKey: process.env.JARVIS_DEMO_LEGACY_API_KEY ?? "",
  legacyModel: process.env.JARVIS_DEMO_LEGACY_MODEL ?? SEED_OPENAI_REALTIME.model,
};

// The demo members of the Lyon Part-Dieu gym, plus one badge of another gym (refused: 403).
const DEMO_BADGES = [
  { badge_id: "LYON-0001", label: "Camille" },
  { badge_id: "LYON-0002", label: "Thomas" },
  { badge_id: "LYON-0004", label: "Nadia" },
  { badge_id: "BDX-0001", label: "Badge d’une autre salle" },
];

const BADGE_PATTERN = /^[A-Za-z0-9-]{1,64}$/;
const MAX_BODY_BYTES = 1024;
const CONTENT_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".mp4": "video/mp4",
};
// The previous provider's session, as the chain configures it today (voice and prompt are its own).
const LEGACY_SESSION = {
  voice: "alloy",
  instructions: "Tu es l’assistant vocal de la salle de sport. Réponds en français, brièvement.",
};

const tokenClient = new JarvisTokenClient({ baseUrl: settings.tokenServiceUrl, gymKey: settings.gymKey });

function sendJson(response, status, body, headers = {}) {
  response.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store", ...headers });
  response.end(JSON.stringify(body));
}

async function readBody(request) {
  const chunks = [];
  let size = 0;
  for await (const chunk of request) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new Error("body too large");
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

async function createKioskSession(request, response) {
  let badgeId;
  try {
    const parsed = JSON.parse(await readBody(request));
    badgeId = typeof parsed?.badge_id === "string" ? parsed.badge_id.trim() : "";
  } catch {
    sendJson(response, 400, { code: "invalid_request", detail: "expected JSON {badge_id}" });
    return;
  }
  if (!BADGE_PATTERN.test(badgeId)) {
    sendJson(response, 422, { code: "invalid_request", detail: "badge_id must be letters, digits and dashes" });
    return;
  }
  try {
    const session = await tokenClient.createSession({ badge_id: badgeId, kiosk_id: settings.kioskId });
    // The browser needs the room credentials and the first name; it never sees the gym key.
    sendJson(response, 201, {
      session_id: session.session_id,
      livekit_url: session.livekit_url,
      token: session.token,
      expires_at: session.expires_at,
      member_first_name: session.member_first_name,
    });
    log(`session created (${session.session_id})`);
  } catch (error) {
    if (error instanceof TokenApiError) {
      const status = error.status === 0 ? 503 : error.status;
      const headers = error.retryAfterSeconds === undefined ? {} : { "retry-after": String(error.retryAfterSeconds) };
      sendJson(response, status, { code: error.code, detail: error.detail }, headers);
      log(`session refused: ${error.code} (${error.status})`);
      return;
    }
    sendJson(response, 500, { code: "unexpected", detail: "internal error" });
    log(`session route failed: ${error instanceof Error ? error.name : "unknown"}`);
  }
}

async function createLegacySession(response) {
  if (!settings.legacyEndpoint) {
    sendJson(response, 404, { code: "legacy_unavailable", detail: "no previous provider configured" });
    return;
  }
  try {
    const secret = await createOpenAIRealtimeClientSecret({
      apiKey: settings.legacyApiKey,
      config: { endpoint: settings.legacyEndpoint, model: settings.legacyModel },
      session: LEGACY_SESSION,
      timeoutMs: 5_000,
    });
    sendJson(response, 201, secret);
    log("legacy provider session created");
  } catch (error) {
    const status = error instanceof RealtimeSecretError ? error.status : 0;
    sendJson(response, 503, { code: "legacy_unavailable", detail: `previous provider answered ${status || "nothing"}` });
    log(`legacy session failed (${status})`);
  }
}

async function serveStatic(pathname, response) {
  // The tutorial clips live beside the page's origin, so the catalogue's "/videos/…" paths play.
  const [dir, path] = pathname.startsWith("/videos/")
    ? [settings.videosDir, pathname.slice("/videos/".length)]
    : [pageDir, pathname === "/" ? "index.html" : pathname];
  const relative = decodeURIComponent(path).replace(/^\/+/, "");
  const file = normalize(join(dir, relative));
  if (!file.startsWith(normalize(dir) + sep)) {
    sendJson(response, 404, { code: "not_found" });
    return;
  }
  try {
    const body = await readFile(file);
    response.writeHead(200, {
      "content-type": CONTENT_TYPES[extname(file)] ?? "application/octet-stream",
      "cache-control": "no-cache",
    });
    response.end(body);
  } catch {
    sendJson(response, 404, { code: "not_found" });
  }
}

function log(message) {
  process.stderr.write(`[kiosk-demo] ${message}\n`);
}

const server = createServer((request, response) => {
  const url = new URL(request.url ?? "/", "http://kiosk.local");
  if (url.pathname === "/api/kiosk-session") {
    if (request.method !== "POST") {
      sendJson(response, 405, { code: "method_not_allowed" }, { allow: "POST" });
      return;
    }
    void createKioskSession(request, response);
    return;
  }
  if (url.pathname === "/api/legacy-session") {
    if (request.method !== "POST") {
      sendJson(response, 405, { code: "method_not_allowed" }, { allow: "POST" });
      return;
    }
    void createLegacySession(response);
    return;
  }
  if (url.pathname === "/api/demo-badges" && request.method === "GET") {
    sendJson(response, 200, DEMO_BADGES);
    return;
  }
  if (url.pathname === "/healthz") {
    sendJson(response, 200, { status: "ok" });
    return;
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    sendJson(response, 405, { code: "method_not_allowed" });
    return;
  }
  void serveStatic(url.pathname, response);
});

server.listen(settings.port, settings.host, () => {
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : settings.port;
  const url = `http://${settings.host}:${port}/`;
  log(`kiosk page: ${url} (token service ${settings.tokenServiceUrl})`);
  process.stdout.write(`KIOSK_URL=${url}\n`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}

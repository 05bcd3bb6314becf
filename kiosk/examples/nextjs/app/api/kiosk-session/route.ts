/**
 * app/api/kiosk-session/route.ts — the gym's Next.js backend route that opens a JARVIS session
 * for a scanned badge (Next.js App Router route handler; runs on the server only).
 *
 * The gym's API key lives in the server's environment (JARVIS_GYM_KEY) and never reaches the
 * browser: the kiosk page posts only {badge_id}, and receives only what it needs to join the
 * room ({livekit_url, token, session_id, expires_at, member_first_name}). A refusal is passed on
 * as {code, detail}. The token service's machine-readable code decides, never the HTTP status
 * alone: `jarvis_disabled` (the rollout flag is off for this gym, kiosk or member) and
 * `over_capacity` (JARVIS is full, with Retry-After) tell the kiosk to use the previous provider
 * (see ../legacy-session/route.ts and KioskScreen.tsx). For Retry-After after an over_capacity,
 * the client answers over_capacity itself without asking the full service again, so every
 * kiosk of the gym goes straight to the previous provider until then.
 *
 * Environment:
 *   JARVIS_TOKEN_SERVICE_URL  e.g. https://jarvis.example.net
 *   JARVIS_GYM_KEY            the gym's API key issued by JARVIS
 *   JARVIS_KIOSK_ID           this kiosk's id, e.g. accueil-1 (or derive it from the device)
 *
 * Authenticate the kiosk device itself before this route in production (device certificate,
 * kiosk session cookie): anyone who can call it can open sessions for the gym's members.
 */
import { JarvisTokenClient, TokenApiError } from "@jarvis/kiosk/server";

const client = new JarvisTokenClient({
  baseUrl: process.env["JARVIS_TOKEN_SERVICE_URL"] ?? "http://127.0.0.1:8080",
  gymKey: process.env["JARVIS_GYM_KEY"] ?? "",
  timeoutMs: 5_000,
});

const BADGE_PATTERN = /^[A-Za-z0-9-]{1,64}$/;

export async function POST(request: Request): Promise<Response> {
  const body = (await request.json().catch(() => null)) as { badge_id?: unknown } | null;
  const badgeId = typeof body?.badge_id === "string" ? body.badge_id.trim() : "";
  if (!BADGE_PATTERN.test(badgeId)) {
    return Response.json({ code: "invalid_request", detail: "badge_id expected" }, { status: 422 });
  }
  try {
    const session = await client.createSession({
      badge_id: badgeId,
      kiosk_id: process.env["JARVIS_KIOSK_ID"] ?? "accueil-1",
    });
    return Response.json(
      {
        session_id: session.session_id,
        livekit_url: session.livekit_url,
        token: session.token,
        expires_at: session.expires_at,
        member_first_name: session.member_first_name,
      },
      { status: 201, headers: { "cache-control": "no-store" } },
    );
  } catch (error) {
    if (error instanceof TokenApiError) {
      const headers: Record<string, string> = { "cache-control": "no-store" };
      if (error.retryAfterSeconds !== undefined) headers["retry-after"] = String(error.retryAfterSeconds);
      if (error.fallback !== null) {
        // jarvis_disabled or over_capacity: the kiosk starts the previous provider (fallbackReasonOf).
        return Response.json({ code: error.fallback, detail: error.detail }, { status: error.status, headers });
      }
      // 401 means this server's key is wrong: the kiosk shows "service unavailable", ops get paged.
      const status = error.status === 0 || error.code === "unauthorized" ? 503 : error.status;
      return Response.json({ code: error.code, detail: error.detail }, { status, headers });
    }
    throw error;
  }
}

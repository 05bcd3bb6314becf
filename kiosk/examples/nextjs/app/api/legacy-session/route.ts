/**
 * app/api/legacy-session/route.ts — the way back: mints a short-lived client secret for the
 * chain's previous voice provider (OpenAI Realtime, configured as the chain's app does today:
 * SEED_OPENAI_REALTIME), for a kiosk that JARVIS cannot take (flag off, full, or no agent came).
 * The OpenAI key stays in this server's environment; the kiosk gets only the secret.
 *
 * Environment:
 *   OPENAI_API_KEY            the chain's OpenAI key
 *   LEGACY_REALTIME_ENDPOINT  optional, default https://api.openai.com/v1/realtime
 */
import { SEED_OPENAI_REALTIME } from "@jarvis/kiosk";
import { createOpenAIRealtimeClientSecret, RealtimeSecretError } from "@jarvis/kiosk/server";

export async function POST(): Promise<Response> {
  try {
    const secret = await createOpenAIRealtimeClientSecret({
      apiKey: process.env["OPENAI_API_KEY"] ?? "",
      config: {
        endpoint: process.env["LEGACY_REALTIME_ENDPOINT"] ?? SEED_OPENAI_REALTIME.endpoint,
        model: SEED_OPENAI_REALTIME.model,
      },
      session: { voice: "alloy", instructions: "Tu es l’assistant vocal de la salle. Réponds en français, brièvement." },
      timeoutMs: 5_000,
    });
    return Response.json(secret, { status: 201, headers: { "cache-control": "no-store" } });
  } catch (error) {
    if (error instanceof RealtimeSecretError) {
      return Response.json({ code: "legacy_unavailable", detail: `previous provider answered ${error.status}` }, { status: 503 });
    }
    throw error;
  }
}

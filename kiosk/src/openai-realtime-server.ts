/**
 * The gym SERVER's half of the example legacy provider: it holds the OpenAI API key and mints
 * a short-lived client secret for one kiosk conversation, with the session's settings (voice,
 * instructions, turn detection) fixed here rather than in the kiosk.
 */
import { SEED_OPENAI_REALTIME, type OpenAIRealtimeConfig, type RealtimeClientSecret } from "./openai-realtime.js";

export interface RealtimeSessionSettings {
  voice?: string;
  instructions?: string;
}

export interface ClientSecretOptions {
  /** The OpenAI API key (server-side secret). */
  apiKey: string;
  config?: OpenAIRealtimeConfig;
  session?: RealtimeSessionSettings;
  timeoutMs?: number;
  /** Injected for tests; defaults to the global fetch. */
  fetch?: typeof fetch;
}

export class RealtimeSecretError extends Error {
  override readonly name = "RealtimeSecretError";

  constructor(
    /** HTTP status, or 0 when no response came back. */
    readonly status: number,
    detail: string,
  ) {
    super(`legacy provider ${status || "unreachable"}: ${detail}`);
  }
}

/** Asks the Realtime API for a client secret (`POST {endpoint}/sessions`). */
export async function createOpenAIRealtimeClientSecret(options: ClientSecretOptions): Promise<RealtimeClientSecret> {
  const config = options.config ?? SEED_OPENAI_REALTIME;
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  let response: Response;
  try {
    response = await fetchImpl(`${config.endpoint.replace(/\/+$/, "")}/sessions`, {
      method: "POST",
      headers: { authorization: `Bearer ${options.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: config.model,
        modalities: ["audio", "text"],
        input_audio_format: "pcm16",
        output_audio_format: "pcm16",
        turn_detection: { type: "server_vad" },
        ...(options.session?.voice ? { voice: options.session.voice } : {}),
        ...(options.session?.instructions ? { instructions: options.session.instructions } : {}),
      }),
      signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
    });
  } catch (error) {
    throw new RealtimeSecretError(0, error instanceof Error ? error.name : "network error");
  }
  if (!response.ok) throw new RealtimeSecretError(response.status, response.statusText || "refused");
  const body = (await response.json().catch(() => null)) as { client_secret?: { value?: unknown }; value?: unknown } | null;
  // The preview API nests the secret in client_secret; the GA one returns it at the top level.
  const value = body?.client_secret?.value ?? body?.value;
  if (typeof value !== "string" || value === "") throw new RealtimeSecretError(response.status, "no client secret in the answer");
  return { value, endpoint: config.endpoint, model: config.model };
}

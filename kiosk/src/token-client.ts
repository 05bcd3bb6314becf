/**
 * A typed client for the JARVIS token API (`POST /v1/sessions`), for the gym's SERVER side
 * only: it holds the gym's API key, which must never reach a browser.
 */

export interface CreateSessionRequest {
  badge_id: string;
  kiosk_id: string;
}

export interface KioskSession {
  session_id: string;
  room: string;
  token: string;
  livekit_url: string;
  /** ISO 8601 time after which the LiveKit token is refused. */
  expires_at: string;
  member_first_name: string;
}

export type TokenApiErrorCode =
  | "unauthorized" // 401: wrong or missing gym key
  | "forbidden" // 403: the badge belongs to another gym
  | "member_not_found" // 404
  | "invalid_request" // 422
  | "rate_limited" // 429 (see retryAfterSeconds)
  | "jarvis_disabled" // JARVIS is off for this gym, kiosk or member: use the previous provider
  | "over_capacity" // JARVIS is full (503 + Retry-After): use the previous provider
  | "unavailable" // 503, or the service could not be reached
  | "unexpected"; // anything else, including a malformed response

export class TokenApiError extends Error {
  override readonly name = "TokenApiError";

  constructor(
    readonly code: TokenApiErrorCode,
    /** HTTP status, or 0 when no response came back. */
    readonly status: number,
    /** The service's `detail`, safe to log (it carries no personal data). */
    readonly detail: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(`token API ${status || "unreachable"} (${code}): ${detail}`);
  }
}

export interface TokenClientOptions {
  /** The token service's base URL, e.g. http://127.0.0.1:8080 */
  baseUrl: string;
  /** The gym's API key (server-side secret). */
  gymKey: string;
  timeoutMs?: number;
  /** Injected for tests; defaults to the global fetch (Node 18+, Next.js). */
  fetch?: typeof fetch;
}

const CODES_BY_STATUS: Readonly<Record<number, TokenApiErrorCode>> = {
  401: "unauthorized",
  403: "forbidden",
  404: "member_not_found",
  422: "invalid_request",
  429: "rate_limited",
  503: "unavailable",
};

export class JarvisTokenClient {
  private readonly baseUrl: string;
  private readonly fetchImpl: typeof fetch;

  constructor(private readonly options: TokenClientOptions) {
    if (!options.gymKey) throw new Error("JarvisTokenClient needs the gym's API key");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Asks for a kiosk session for a scanned badge. Throws TokenApiError on any failure. */
  async createSession(request: CreateSessionRequest): Promise<KioskSession> {
    let response: Response;
    try {
      response = await this.fetchImpl(`${this.baseUrl}/v1/sessions`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${this.options.gymKey}`,
          "content-type": "application/json",
          accept: "application/json",
        },
        body: JSON.stringify({ badge_id: request.badge_id, kiosk_id: request.kiosk_id }),
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 10_000),
      });
    } catch (error) {
      const why = error instanceof Error ? error.name : "network error";
      throw new TokenApiError("unavailable", 0, `token service unreachable (${why})`);
    }
    const body: unknown = await response.json().catch(() => undefined);
    if (!response.ok) {
      // The body's own code says more than the status (503 is over_capacity or unavailable).
      const code = knownCode(body) ?? CODES_BY_STATUS[response.status] ?? "unexpected";
      throw new TokenApiError(code, response.status, detailOf(body, response.statusText), retryAfter(response));
    }
    return parseSession(body);
  }
}

export function parseSession(body: unknown): KioskSession {
  if (typeof body !== "object" || body === null) {
    throw new TokenApiError("unexpected", 200, "response is not a JSON object");
  }
  const record = body as Record<string, unknown>;
  const fields = ["session_id", "room", "token", "livekit_url", "expires_at", "member_first_name"] as const;
  for (const field of fields) {
    if (typeof record[field] !== "string") throw new TokenApiError("unexpected", 200, `response lacks "${field}"`);
  }
  return {
    session_id: record["session_id"] as string,
    room: record["room"] as string,
    token: record["token"] as string,
    livekit_url: record["livekit_url"] as string,
    expires_at: record["expires_at"] as string,
    member_first_name: record["member_first_name"] as string,
  };
}

const BODY_CODES: ReadonlySet<string> = new Set<TokenApiErrorCode>([
  "unauthorized",
  "forbidden",
  "member_not_found",
  "invalid_request",
  "rate_limited",
  "jarvis_disabled",
  "over_capacity",
  "unavailable",
]);

function knownCode(body: unknown): TokenApiErrorCode | undefined {
  if (typeof body !== "object" || body === null) return undefined;
  const code = (body as { code?: unknown }).code;
  return typeof code === "string" && BODY_CODES.has(code) ? (code as TokenApiErrorCode) : undefined;
}

function detailOf(body: unknown, fallback: string): string {
  if (typeof body === "object" && body !== null && "detail" in body) {
    const detail = (body as { detail: unknown }).detail;
    // FastAPI's 422 gives a list of validation errors rather than a sentence.
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  }
  return fallback || "no detail";
}

function retryAfter(response: Response): number | undefined {
  const header = response.headers.get("retry-after");
  if (header === null) return undefined;
  const seconds = Number(header);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : undefined;
}

/**
 * A typed client for the JARVIS token API (`POST /v1/sessions`), for the gym's SERVER side
 * only: it holds the gym's API key, which must never reach a browser.
 *
 * A refusal is read by the body's machine-readable `code` (token_service/errors.py), not by its
 * HTTP status: only `jarvis_disabled` and `over_capacity` send the kiosk to the previous
 * provider (`TokenApiError.fallback`); a bare 403 or 503 does not.
 */

import type { FallbackReason } from "./legacy.js";

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
  | "forbidden" // 403 without a code the client knows
  | "member_not_found" // 404: unknown badge (also another gym's), inactive membership
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
    /** The body's own `code`, verbatim (e.g. `unknown_badge`, `bad_api_key`), when it had one. */
    readonly serviceCode?: string,
  ) {
    super(`token API ${status || "unreachable"} (${code}): ${detail}`);
  }

  /** Why the kiosk must use the previous provider instead of JARVIS, or null when it must not. */
  get fallback(): Exclude<FallbackReason, "agent_absent"> | null {
    return this.code === "jarvis_disabled" || this.code === "over_capacity" ? this.code : null;
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
  /** Injected for tests: the clock (ms) that Retry-After of over_capacity is counted on. */
  now?: () => number;
}

const CODES_BY_STATUS: Readonly<Record<number, TokenApiErrorCode>> = {
  401: "unauthorized",
  403: "forbidden",
  404: "member_not_found",
  422: "invalid_request",
  429: "rate_limited",
  503: "unavailable",
};

/**
 * The token service's codes (token_service/errors.py and its callers), in this client's words;
 * a gym backend in front of it may pass this client's own words on, so they map to themselves.
 */
const SERVICE_CODES: ReadonlyMap<string, TokenApiErrorCode> = new Map<string, TokenApiErrorCode>([
  ["missing_api_key", "unauthorized"],
  ["bad_api_key", "unauthorized"],
  ["jarvis_disabled", "jarvis_disabled"],
  ["unknown_badge", "member_not_found"],
  ["inactive_badge", "member_not_found"],
  ["body_too_large", "invalid_request"],
  ["rate_limited", "rate_limited"],
  ["too_many_bad_keys", "rate_limited"],
  ["over_capacity", "over_capacity"],
  ["database_unavailable", "unavailable"],
  ["internal_error", "unexpected"],
  ...(["unauthorized", "forbidden", "member_not_found", "invalid_request", "unavailable"] as const).map(
    (code) => [code, code] as const,
  ),
]);

export class JarvisTokenClient {
  private readonly baseUrl: string;
  private readonly fetchImpl: typeof fetch;
  private readonly now: () => number;
  /** While JARVIS is full (over_capacity's Retry-After): the refusal, and when it ends (ms). */
  private full: { error: TokenApiError; until: number } | null = null;

  constructor(private readonly options: TokenClientOptions) {
    if (!options.gymKey) throw new Error("JarvisTokenClient needs the gym's API key");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.now = options.now ?? Date.now;
  }

  /**
   * Asks for a kiosk session for a scanned badge. Throws TokenApiError on any failure.
   *
   * After an `over_capacity` with Retry-After, the next badges get the same refusal at once,
   * without asking, until Retry-After has passed: the kiosks go straight to the previous provider
   * and the full service is not asked again by every badge scan.
   */
  async createSession(request: CreateSessionRequest): Promise<KioskSession> {
    const held = this.stillFull();
    if (held !== null) throw held;
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
      const serviceCode = codeOf(body);
      const code =
        (serviceCode === undefined ? undefined : SERVICE_CODES.get(serviceCode)) ??
        CODES_BY_STATUS[response.status] ??
        "unexpected";
      const wait = retryAfter(response);
      const error = new TokenApiError(code, response.status, detailOf(body, response.statusText), wait, serviceCode);
      if (code === "over_capacity" && wait !== undefined && wait > 0) {
        this.full = { error, until: this.now() + wait * 1000 };
      }
      throw error;
    }
    this.full = null;
    return parseSession(body);
  }

  /** The over_capacity refusal still in force, its Retry-After counted down; or null. */
  private stillFull(): TokenApiError | null {
    if (this.full === null) return null;
    const leftMs = this.full.until - this.now();
    if (leftMs <= 0) {
      this.full = null;
      return null;
    }
    const { code, status, detail, serviceCode } = this.full.error;
    return new TokenApiError(code, status, detail, Math.ceil(leftMs / 1000), serviceCode);
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

function codeOf(body: unknown): string | undefined {
  if (typeof body !== "object" || body === null) return undefined;
  const code = (body as { code?: unknown }).code;
  return typeof code === "string" && code ? code : undefined;
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

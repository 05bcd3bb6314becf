/**
 * The `kiosk.show_video` RPC: the agent asks the kiosk to play a tutorial video.
 * Whatever arrives is untrusted (a confused LLM can put anything in a tool call), so the
 * payload is checked before anything reaches the screen, and the agent is told why not.
 */

export const SHOW_VIDEO_METHOD = "kiosk.show_video";
export const MAX_SHOW_VIDEO_PAYLOAD_BYTES = 4096;
export const MAX_VIDEO_TITLE_CHARS = 200;

export interface KioskVideo {
  url: string;
  title: string;
}

export type ShowVideoRejection =
  | "payload_too_large"
  | "invalid_json"
  | "not_an_object"
  | "missing_url"
  | "invalid_url"
  | "unsupported_url_scheme"
  | "invalid_title"
  | "title_too_long";

export type ShowVideoValidation =
  | { ok: true; video: KioskVideo }
  | { ok: false; reason: ShowVideoRejection };

export type ShowVideoReply = { status: "shown" } | { status: "rejected"; reason: ShowVideoRejection };

const utf8 = new TextEncoder();

/**
 * `base` resolves a catalogue path ("/videos/gym/squat.mp4") against the kiosk page's own origin,
 * so a gym can serve its clips beside the page; without a base only absolute URLs pass.
 */
export function validateShowVideoPayload(payload: string, base?: string): ShowVideoValidation {
  // Measure bytes before parsing: a 1 MB payload is refused without ever being parsed.
  if (payload.length > MAX_SHOW_VIDEO_PAYLOAD_BYTES || utf8.encode(payload).length > MAX_SHOW_VIDEO_PAYLOAD_BYTES) {
    return { ok: false, reason: "payload_too_large" };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(payload);
  } catch {
    return { ok: false, reason: "invalid_json" };
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return { ok: false, reason: "not_an_object" };
  }
  const record = parsed as Record<string, unknown>;
  const rawUrl = record["url"];
  if (rawUrl === undefined || rawUrl === null || rawUrl === "") return { ok: false, reason: "missing_url" };
  if (typeof rawUrl !== "string") return { ok: false, reason: "invalid_url" };
  let url: URL;
  try {
    url = new URL(rawUrl.trim(), base);
  } catch {
    return { ok: false, reason: "invalid_url" };
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    return { ok: false, reason: "unsupported_url_scheme" };
  }
  const rawTitle = record["title"] ?? "";
  if (typeof rawTitle !== "string") return { ok: false, reason: "invalid_title" };
  const title = rawTitle.trim();
  if ([...title].length > MAX_VIDEO_TITLE_CHARS) return { ok: false, reason: "title_too_long" };
  return { ok: true, video: { url: url.toString(), title } };
}

export interface ShowVideoHandlerDeps {
  show: (video: KioskVideo) => void;
  onRejected: (reason: ShowVideoRejection, callerIdentity: string) => void;
  /** Where relative video paths resolve (the kiosk page's URL). */
  base?: string;
}

/** Validates one invocation, shows the video or reports the refusal, and builds the RPC reply. */
export function answerShowVideo(payload: string, callerIdentity: string, deps: ShowVideoHandlerDeps): string {
  const result = validateShowVideoPayload(payload, deps.base);
  let reply: ShowVideoReply;
  if (result.ok) {
    deps.show(result.video);
    reply = { status: "shown" };
  } else {
    deps.onRejected(result.reason, callerIdentity);
    reply = { status: "rejected", reason: result.reason };
  }
  return JSON.stringify(reply);
}

/**
 * The way back: the chain's previous voice provider, behind the smallest interface the kiosk
 * needs. The kiosk switches to it when the token service says JARVIS is not for this member
 * (`jarvis_disabled`: the rollout flag is off, or the kill switch is on), when JARVIS is full
 * (`over_capacity`), or when no agent joined the room within the bound (`agent_absent`).
 */

export interface LegacyVoiceProvider {
  /** Starts a conversation with the previous provider (microphone, audio out). Throws if it cannot. */
  start(): Promise<void>;
  /** Ends it and releases the microphone. Safe to call twice. */
  stop(): Promise<void>;
}

/** Why the kiosk fell back. */
export type FallbackReason = "jarvis_disabled" | "over_capacity" | "agent_absent";

/** The token service's codes (`POST /v1/sessions`) that send the kiosk to the previous provider. */
export const LEGACY_CODES: readonly FallbackReason[] = ["jarvis_disabled", "over_capacity"];

/**
 * The fallback reason in a session route's answer (`{"code": "jarvis_disabled"}`, whatever the
 * HTTP status), or null when the answer does not ask for the previous provider.
 */
export function fallbackReasonOf(body: unknown): Exclude<FallbackReason, "agent_absent"> | null {
  if (typeof body !== "object" || body === null) return null;
  const code = (body as { code?: unknown }).code;
  return code === "jarvis_disabled" || code === "over_capacity" ? code : null;
}

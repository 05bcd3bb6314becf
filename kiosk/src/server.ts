/** @jarvis/kiosk/server: what the gym's SERVER uses (it holds the keys; never import it in a browser). */
export { JarvisTokenClient, TokenApiError, parseSession } from "./token-client.js";
export type { CreateSessionRequest, KioskSession, TokenApiErrorCode, TokenClientOptions } from "./token-client.js";
export { createOpenAIRealtimeClientSecret, RealtimeSecretError } from "./openai-realtime-server.js";
export type { ClientSecretOptions, RealtimeSessionSettings } from "./openai-realtime-server.js";
export { fallbackReasonOf, LEGACY_CODES } from "./legacy.js";
export type { FallbackReason } from "./legacy.js";

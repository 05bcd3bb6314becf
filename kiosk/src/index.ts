/** @jarvis/kiosk: the browser side of a JARVIS gym kiosk. */
export { JarvisKiosk, CHAT_TOPIC, MICROPHONE_CAPTURE, isTokenRefused } from "./kiosk.js";
export type { JarvisKioskEvents, JarvisKioskOptions, KioskSessionCredentials, EndReason } from "./kiosk.js";
export { BargeInDuck, DUCK_DEFAULTS, levelDb } from "./duck.js";
export type { BargeInDuckOptions } from "./duck.js";
export { TypedEmitter } from "./events.js";
export { fallbackReasonOf, LEGACY_CODES } from "./legacy.js";
export type { FallbackReason, LegacyVoiceProvider } from "./legacy.js";
export { OpenAIRealtimeProvider, SEED_OPENAI_REALTIME } from "./openai-realtime.js";
export type { OpenAIRealtimeConfig, OpenAIRealtimeProviderOptions, RealtimeClientSecret } from "./openai-realtime.js";
export { FRENCH_MESSAGES, FRENCH_STATE_LABELS, kioskError } from "./messages.js";
export type { KioskError, KioskErrorCode } from "./messages.js";
export {
  answerShowVideo,
  validateShowVideoPayload,
  MAX_SHOW_VIDEO_PAYLOAD_BYTES,
  MAX_VIDEO_TITLE_CHARS,
  SHOW_VIDEO_METHOD,
} from "./rpc.js";
export type { KioskVideo, ShowVideoRejection, ShowVideoReply, ShowVideoValidation } from "./rpc.js";
export { classifyDisconnect, DEFAULT_RECONNECT_DELAYS_MS, Reconnector } from "./reconnect.js";
export type { DisconnectCause, ReconnectOutcome } from "./reconnect.js";
export { AGENT_STATE_ATTRIBUTE, deriveKioskState, KIOSK_STATES, KioskStateMachine } from "./state.js";
export type { KioskState, StateInputs } from "./state.js";
export { Transcript, TRANSCRIPTION_TOPIC } from "./transcript.js";
export type { Speaker, TranscriptLine } from "./transcript.js";

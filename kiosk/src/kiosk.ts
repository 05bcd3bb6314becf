/**
 * JarvisKiosk: one member's conversation with JARVIS on a kiosk, over livekit-client.
 *
 * It joins the room the token service prepared, publishes the microphone with the
 * browser's echo cancellation / noise suppression / auto gain, plays the agent's voice,
 * follows the agent's state and the live transcript, answers the agent's
 * `kiosk.show_video` RPC, survives network blips and ends cleanly. The UI only listens
 * to its typed events. Given a `legacy` provider, it falls back to the chain's previous voice
 * provider when no agent joined within `agentTimeoutMs`, or when told to (`fallBack`).
 */
import {
  ConnectionError,
  ConnectionErrorReason,
  ConnectionState,
  MediaDeviceFailure,
  ParticipantKind,
  Room,
  RoomEvent,
  Track,
  createAudioAnalyser,
  type AudioCaptureOptions,
  type LocalAudioTrack,
  type RemoteAudioTrack,
  type Participant,
  type RemoteParticipant,
  type ReconnectPolicy,
  type RemoteTrack,
  type RpcInvocationData,
  type TextStreamReader,
} from "livekit-client";

import { BargeInDuck, levelDb, type BargeInDuckOptions } from "./duck.js";
import { TypedEmitter } from "./events.js";
import type { FallbackReason, LegacyVoiceProvider } from "./legacy.js";
import { kioskError, type KioskError } from "./messages.js";
import { classifyDisconnect, DEFAULT_RECONNECT_DELAYS_MS, Reconnector, type AttemptFailure } from "./reconnect.js";
import { answerShowVideo, SHOW_VIDEO_METHOD, type KioskVideo, type ShowVideoRejection } from "./rpc.js";
import { AGENT_STATE_ATTRIBUTE, KioskStateMachine, type KioskState } from "./state.js";
import {
  ATTR_SEGMENT_ID,
  ATTR_TRANSCRIPTION_FINAL,
  Transcript,
  TRANSCRIPTION_TOPIC,
  type TranscriptLine,
} from "./transcript.js";

/** What the gym backend's session route returns (a subset of the token API's response). */
export interface KioskSessionCredentials {
  livekit_url: string;
  token: string;
  session_id?: string;
  member_first_name?: string;
}

export interface JarvisKioskOptions {
  /**
   * How long to wait for the agent to join before falling back to `legacy`, or, without one,
   * telling the member (ms; default 20 s). A kiosk with a fallback may prefer less, e.g. 8 s.
   */
  agentTimeoutMs?: number;
  /** The chain's previous voice provider: where the member goes when JARVIS cannot take them. */
  legacy?: LegacyVoiceProvider;
  /** Delays between rejoin attempts once livekit-client gave up on a blip (ms). */
  reconnectDelaysMs?: readonly number[];
  /**
   * livekit-client's own retry schedule for a blip (signal resume, ICE restart), in ms.
   * Default: livekit-client's (about 40 s in all). A kiosk may prefer to tell the member sooner.
   */
  blipRetryDelaysMs?: readonly number[];
  /** Where the agent's hidden <audio> elements go (default: document.body). */
  audioContainer?: HTMLElement;
  /** Publish the microphone (default true). False gives a text-only kiosk. */
  microphone?: boolean;
  /**
   * Duck JARVIS's voice the moment the member's microphone carries sound (barge-in's first step,
   * before the agent hears it; see duck.ts). Default on with DUCK_DEFAULTS; false turns it off.
   */
  bargeInDuck?: BargeInDuckOptions | false;
  logger?: Pick<Console, "info" | "warn" | "error">;
}

export type EndReason = "by_member" | "by_server" | "error";

export interface JarvisKioskEvents {
  state: KioskState;
  transcript: TranscriptLine[];
  /** A video to show, or null when it should close. */
  video: KioskVideo | null;
  videoRejected: { reason: ShowVideoRejection };
  error: KioskError;
  muted: boolean;
  /** The agent's received audio track (for level meters), or null when it goes away. */
  agentAudio: MediaStreamTrack | null;
  /** JARVIS's voice ducked (true) because the member made a sound, or came back (false). */
  ducked: boolean;
  /** The conversation moved to the legacy provider, and why. */
  fallback: { reason: FallbackReason };
  ended: { reason: EndReason };
}

/** The text-mode chat topic LiveKit Agents reads member text from. */
export const CHAT_TOPIC = "lk.chat";

export const MICROPHONE_CAPTURE: AudioCaptureOptions = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
};

const DEFAULT_AGENT_TIMEOUT_MS = 20_000;
const MAX_INCOMING_STREAM_BYTES = 2_000_000;
// Microphone readings for the duck: 10 ms apart, over 512 samples (10.7 ms at 48 kHz).
const DUCK_READ_EVERY_MS = 10;
const DUCK_WINDOW_SAMPLES = 512;

export class JarvisKiosk extends TypedEmitter<JarvisKioskEvents> {
  private room: Room | null = null;
  private credentials: KioskSessionCredentials | null = null;
  private readonly machine: KioskStateMachine;
  private readonly transcriptLines = new Transcript();
  private readonly reconnector: Reconnector;
  private readonly logger: Pick<Console, "info" | "warn" | "error">;
  private agentIdentity: string | null = null;
  private agentTimer: ReturnType<typeof setTimeout> | null = null;
  private ending = false;
  private mutedFlag = false;
  private currentVideo: KioskVideo | null = null;
  private legacyActive = false;
  private readonly agentVoices = new Set<RemoteAudioTrack>();
  private duck: BargeInDuck | null = null;
  private stopDuckMeter: (() => void) | null = null;

  constructor(private readonly options: JarvisKioskOptions = {}) {
    super();
    this.logger = options.logger ?? console;
    this.machine = new KioskStateMachine((state) => this.emit("state", state));
    this.reconnector = new Reconnector({ delaysMs: options.reconnectDelaysMs ?? DEFAULT_RECONNECT_DELAYS_MS });
  }

  get state(): KioskState {
    return this.machine.state;
  }

  get muted(): boolean {
    return this.mutedFlag;
  }

  /** True while an agent participant is in the room (ready or not). */
  get agentPresent(): boolean {
    return this.machine.snapshot.agentPresent;
  }

  get video(): KioskVideo | null {
    return this.currentVideo;
  }

  get transcript(): TranscriptLine[] {
    return this.transcriptLines.snapshot();
  }

  /** Who carries the conversation: JARVIS, the legacy provider, or nobody yet. */
  get provider(): "jarvis" | "legacy" | null {
    if (this.legacyActive) return "legacy";
    return this.room ? "jarvis" : null;
  }

  /** The underlying LiveKit room (for stats and tests); null outside a session. */
  get livekitRoom(): Room | null {
    return this.room;
  }

  /** Joins the session's room; resolves once joined (the agent may still be on its way). */
  async connect(credentials: KioskSessionCredentials): Promise<void> {
    if (this.room || this.legacyActive) throw new Error("this kiosk already has a session: call end() first");
    this.credentials = credentials;
    this.ending = false;
    this.agentIdentity = null;
    this.transcriptLines.clear();
    this.machine.reset();
    this.machine.update({ started: true, connection: "connecting" });

    const room = new Room({
      audioCaptureDefaults: MICROPHONE_CAPTURE,
      adaptiveStream: false,
      dynacast: false,
      // Single peer connection mode fails renegotiation ("Transceiver not found based on
      // m-line index") when the mic is published while the agent's track arrives, with
      // livekit-server 1.13 and Chromium 156: the classic two-connection mode does not.
      singlePeerConnection: false,
      ...(this.options.blipRetryDelaysMs ? { reconnectPolicy: scheduledPolicy(this.options.blipRetryDelaysMs) } : {}),
      // Bounds what one incoming data stream (an RPC, a transcript) may hold in memory.
      dataStream: { maxPayloadByteLength: MAX_INCOMING_STREAM_BYTES },
    });
    this.room = room;
    this.wireRoom(room);
    try {
      await room.connect(credentials.livekit_url, credentials.token, { autoSubscribe: true });
    } catch (error) {
      void this.failSession(isTokenRefused(error) ? "token_expired" : "connection_failed", describe(error));
      return;
    }
    this.machine.update({ connection: "connected" });
    for (const participant of room.remoteParticipants.values()) this.considerParticipant(participant);
    this.armAgentTimer();
    // The badge tap is the user gesture that lets audio play on a kiosk browser.
    room.startAudio().catch((error: unknown) => this.logger.warn("[jarvis-kiosk] audio playback blocked", describe(error)));
    if (this.options.microphone ?? true) await this.publishMicrophone();
  }

  /**
   * Moves the conversation to the legacy provider: leaves the JARVIS room if there is one, then
   * starts the provider. Call it when the session route answered `jarvis_disabled` or
   * `over_capacity` (see fallbackReasonOf); the kiosk calls it itself when no agent came.
   * Resolves false when no legacy provider is configured or it could not start (the member
   * is then told, as without a fallback).
   */
  async fallBack(reason: FallbackReason): Promise<boolean> {
    const legacy = this.options.legacy;
    if (!legacy || this.ending) return false;
    if (this.legacyActive) return true;
    await this.leaveRoom();
    this.legacyActive = true;
    this.machine.update({ started: true, legacy: true, connection: "disconnected", agentPresent: false, agentState: undefined });
    this.logger.info(`[jarvis-kiosk] falling back to the legacy provider: ${reason}`);
    this.emit("fallback", { reason });
    try {
      await legacy.start();
      return true;
    } catch (error) {
      await this.failSession(reason === "agent_absent" ? "agent_absent" : "session_unavailable", describe(error));
      return false;
    }
  }

  /** Mutes or unmutes the member's microphone. */
  async setMuted(muted: boolean): Promise<void> {
    const room = this.room;
    if (!room || this.state === "ended") return;
    await room.localParticipant.setMicrophoneEnabled(!muted, MICROPHONE_CAPTURE);
    this.mutedFlag = muted;
    if (muted) this.stopDuck();
    else this.startDuck();
    this.emit("muted", muted);
  }

  /** Sends a typed message to the agent (text mode), and shows it in the transcript. */
  async sendChat(text: string): Promise<void> {
    const room = this.room;
    const trimmed = text.trim();
    if (!room || trimmed === "") return;
    await room.localParticipant.sendText(trimmed, { topic: CHAT_TOPIC });
    const id = `chat-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    this.transcriptLines.beginSegment(id, "member", true);
    this.transcriptLines.appendDelta(id, trimmed);
    this.emit("transcript", this.transcriptLines.snapshot());
  }

  /** Closes the video overlay (a tap on it, or the end of the video). */
  closeVideo(): void {
    if (this.currentVideo === null) return;
    this.currentVideo = null;
    this.emit("video", null);
  }

  /** Ends the session: leaves the room, stops the microphone, closes the video. */
  async end(): Promise<void> {
    await this.finish("by_member");
  }

  private wireRoom(room: Room): void {
    room
      .on(RoomEvent.ConnectionStateChanged, (state) => this.onConnectionState(state))
      .on(RoomEvent.Disconnected, (reason) => this.onDisconnected(reason))
      .on(RoomEvent.ParticipantConnected, (participant) => this.considerParticipant(participant))
      .on(RoomEvent.ParticipantDisconnected, (participant) => this.onParticipantLeft(participant))
      .on(RoomEvent.ParticipantAttributesChanged, (_changed, participant) => this.considerParticipant(participant))
      .on(RoomEvent.TrackSubscribed, (track, _publication, participant) => this.onTrackSubscribed(track, participant))
      .on(RoomEvent.TrackUnsubscribed, (track) => this.onTrackUnsubscribed(track))
      .on(RoomEvent.MediaDevicesError, (error) => this.onMicrophoneError(error));

    room.registerTextStreamHandler(TRANSCRIPTION_TOPIC, (reader, participantInfo) => {
      void this.readTranscription(reader, participantInfo.identity);
    });
    room.registerRpcMethod(SHOW_VIDEO_METHOD, async (data: RpcInvocationData) =>
      answerShowVideo(data.payload, data.callerIdentity, {
        base: globalThis.location?.href,
        show: (video) => {
          this.currentVideo = video;
          this.emit("video", video);
        },
        onRejected: (reason, caller) => {
          // The payload itself is not logged: it may be huge, or carry anything.
          this.logger.warn(`[jarvis-kiosk] ${SHOW_VIDEO_METHOD} refused from ${caller}: ${reason}`);
          this.emit("videoRejected", { reason });
        },
      }),
    );
  }

  private onConnectionState(state: ConnectionState): void {
    // Both a signal resume and a full ICE reconnection show as "reconnecting" to the member.
    if (state === ConnectionState.Reconnecting || state === ConnectionState.SignalReconnecting) {
      this.machine.update({ connection: "reconnecting" });
    } else if (state === ConnectionState.Connected && this.machine.snapshot.connection === "reconnecting") {
      this.machine.update({ connection: "connected" });
    }
  }

  private async publishMicrophone(): Promise<void> {
    const room = this.room;
    if (!room) return;
    try {
      await room.localParticipant.setMicrophoneEnabled(true, MICROPHONE_CAPTURE);
    } catch (error) {
      this.onMicrophoneError(error);
      return;
    }
    this.startDuck();
  }

  /** Reads the member's microphone every 10 ms and ducks JARVIS's voice on sound (duck.ts). */
  private startDuck(): void {
    const options = this.options.bargeInDuck ?? {};
    const microphone = this.room?.localParticipant.getTrackPublication(Track.Source.Microphone)?.audioTrack;
    if (options === false || !microphone || this.stopDuckMeter) return;
    let analyser: AnalyserNode;
    let cleanup: () => Promise<void>;
    try {
      ({ analyser, cleanup } = createAudioAnalyser(microphone as LocalAudioTrack, { fftSize: DUCK_WINDOW_SAMPLES }));
    } catch (error) {
      // No Web Audio: the agent's own pause still works, only later.
      this.logger.warn("[jarvis-kiosk] barge-in duck unavailable", describe(error));
      return;
    }
    (analyser.context as AudioContext).resume?.().catch(() => undefined);
    const duck = new BargeInDuck(options, (gain) => {
      for (const voice of this.agentVoices) voice.setVolume(gain);
      this.emit("ducked", gain < 1);
    });
    const samples = new Float32Array(DUCK_WINDOW_SAMPLES);
    const timer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      duck.feed(levelDb(samples), performance.now());
    }, DUCK_READ_EVERY_MS);
    this.duck = duck;
    this.stopDuckMeter = () => {
      clearInterval(timer);
      void cleanup().catch(() => undefined);
    };
  }

  private stopDuck(): void {
    this.stopDuckMeter?.();
    this.stopDuckMeter = null;
    this.duck?.release();
    this.duck = null;
  }

  private onMicrophoneError(error: unknown): void {
    const failure = MediaDeviceFailure.getFailure(error);
    const code = failure === MediaDeviceFailure.NotFound ? "microphone_missing" : "microphone_denied";
    this.logger.warn("[jarvis-kiosk] microphone unavailable", failure ?? describe(error));
    // The session stays open: the member can still read and the agent can still speak.
    this.emit("error", kioskError(code, String(failure ?? "unknown")));
  }

  private isAgent(participant: Participant): boolean {
    return participant.kind === ParticipantKind.AGENT || AGENT_STATE_ATTRIBUTE in participant.attributes;
  }

  private considerParticipant(participant: Participant): void {
    if (participant === this.room?.localParticipant || !this.isAgent(participant)) return;
    this.agentIdentity = participant.identity;
    this.clearAgentTimer();
    this.machine.update({ agentPresent: true, agentState: participant.attributes[AGENT_STATE_ATTRIBUTE] });
  }

  private onParticipantLeft(participant: RemoteParticipant): void {
    if (participant.identity !== this.agentIdentity) return;
    this.agentIdentity = null;
    this.machine.update({ agentPresent: false, agentState: undefined });
    this.emit("agentAudio", null);
    // The agent may come back (a worker restart); if not, the member is told.
    this.armAgentTimer();
  }

  private onTrackSubscribed(track: RemoteTrack, participant: RemoteParticipant): void {
    if (track.kind !== Track.Kind.Audio) return;
    const element = track.attach();
    element.dataset["jarvisAgentAudio"] = participant.identity;
    (this.options.audioContainer ?? document.body).appendChild(element);
    if (!this.isAgent(participant)) return;
    const voice = track as RemoteAudioTrack;
    this.agentVoices.add(voice);
    if (this.duck?.ducked) voice.setVolume(this.duck.gain);
    this.emit("agentAudio", track.mediaStreamTrack);
  }

  private onTrackUnsubscribed(track: RemoteTrack): void {
    this.agentVoices.delete(track as RemoteAudioTrack);
    for (const element of track.detach()) element.remove();
  }

  private async readTranscription(reader: TextStreamReader, senderIdentity: string): Promise<void> {
    const attributes = reader.info.attributes ?? {};
    const segmentId = attributes[ATTR_SEGMENT_ID] ?? reader.info.id;
    const local = this.room?.localParticipant;
    const trackId = attributes["lk.transcribed_track_id"];
    const fromMember =
      senderIdentity === local?.identity || (trackId !== undefined && local?.trackPublications.has(trackId) === true);
    this.transcriptLines.beginSegment(segmentId, fromMember ? "member" : "agent", attributes[ATTR_TRANSCRIPTION_FINAL] === "true");
    try {
      for await (const delta of reader) {
        this.transcriptLines.appendDelta(segmentId, delta);
        this.emit("transcript", this.transcriptLines.snapshot());
      }
    } catch (error) {
      this.logger.warn("[jarvis-kiosk] transcription stream interrupted", describe(error));
    }
    if (attributes[ATTR_TRANSCRIPTION_FINAL] === "true") this.transcriptLines.markFinal(segmentId);
    this.emit("transcript", this.transcriptLines.snapshot());
  }

  private onDisconnected(reason: number | undefined): void {
    // No room: we left it ourselves (end, or the fallback), so this is not a network drop.
    if (this.ending || this.state === "ended" || this.room === null) return;
    const cause = classifyDisconnect(reason);
    if (!Reconnector.shouldRetry(cause)) {
      void this.finish(cause === "by_member" ? "by_member" : "by_server");
      return;
    }
    void this.rejoin();
  }

  private async rejoin(): Promise<void> {
    const room = this.room;
    const credentials = this.credentials;
    if (!room || !credentials || this.reconnector.isRunning) return;
    this.clearAgentTimer();
    this.machine.update({ connection: "reconnecting", agentPresent: false, agentState: undefined });
    const outcome = await this.reconnector.run(
      () => room.connect(credentials.livekit_url, credentials.token, { autoSubscribe: true }),
      (error): AttemptFailure => ({ tokenRefused: isTokenRefused(error) }),
      (n) => this.logger.info(`[jarvis-kiosk] rejoining the room, attempt ${n}`),
    );
    if (outcome === "cancelled") return;
    if (outcome === "reconnected") {
      this.machine.update({ connection: "connected" });
      for (const participant of room.remoteParticipants.values()) this.considerParticipant(participant);
      this.armAgentTimer();
      if ((this.options.microphone ?? true) && !this.mutedFlag) await this.publishMicrophone();
      return;
    }
    void this.failSession(outcome === "token_refused" ? "token_expired" : "network_lost", outcome);
  }

  private armAgentTimer(): void {
    this.clearAgentTimer();
    if (this.agentIdentity !== null) return;
    this.agentTimer = setTimeout(() => {
      this.agentTimer = null;
      if (this.agentIdentity !== null || this.state === "ended") return;
      if (this.options.legacy) void this.fallBack("agent_absent");
      else void this.failSession("agent_absent");
    }, this.options.agentTimeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS);
  }

  private clearAgentTimer(): void {
    if (this.agentTimer !== null) clearTimeout(this.agentTimer);
    this.agentTimer = null;
  }

  private failSession(code: Parameters<typeof kioskError>[0], detail?: string): Promise<void> {
    this.logger.warn(`[jarvis-kiosk] session failed: ${code}`, detail ?? "");
    this.emit("error", kioskError(code, detail));
    return this.finish("error");
  }

  private async finish(reason: EndReason): Promise<void> {
    if (this.ending) return;
    this.ending = true;
    await this.leaveRoom();
    if (this.legacyActive) {
      this.legacyActive = false;
      try {
        await this.options.legacy?.stop();
      } catch (error) {
        this.logger.warn("[jarvis-kiosk] stopping the legacy provider failed", describe(error));
      }
    }
    this.machine.update({ ended: true, legacy: false, connection: "disconnected" });
    this.emit("ended", { reason });
  }

  /** Leaves the JARVIS room, if any: timers, retries, video and handlers go with it. */
  private async leaveRoom(): Promise<void> {
    this.clearAgentTimer();
    this.reconnector.cancel();
    const room = this.room;
    this.room = null;
    this.agentIdentity = null;
    this.stopDuck();
    this.agentVoices.clear();
    this.closeVideo();
    if (room) {
      room.unregisterTextStreamHandler(TRANSCRIPTION_TOPIC);
      room.unregisterRpcMethod(SHOW_VIDEO_METHOD);
      try {
        await room.disconnect(true);
      } catch (error) {
        this.logger.warn("[jarvis-kiosk] leaving the room failed", describe(error));
      }
      room.removeAllListeners();
    }
    this.emit("agentAudio", null);
  }
}

/** A livekit-client reconnect policy that follows a fixed schedule, then gives up. */
export function scheduledPolicy(delaysMs: readonly number[]): ReconnectPolicy {
  return { nextRetryDelayInMs: ({ retryCount }) => delaysMs[retryCount] ?? null };
}

/** True when LiveKit refused the token itself (expired or invalid): retrying cannot help. */
export function isTokenRefused(error: unknown): boolean {
  return (
    error instanceof ConnectionError &&
    error.reason === ConnectionErrorReason.NotAllowed &&
    (error.status === 401 || error.status === 403)
  );
}

function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

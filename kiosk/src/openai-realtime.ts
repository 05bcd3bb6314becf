/**
 * The example legacy provider: the chain's current OpenAI Realtime voice chat, with the
 * configuration the chain's app uses today (the seed's `voiceConfig.ts`: endpoint
 * https://api.openai.com/v1/realtime, model gpt-4o-mini-realtime-preview).
 *
 * Browser side: the kiosk gets a short-lived client secret from the gym's server (which holds
 * the OpenAI key, see `createOpenAIRealtimeClientSecret` in `@jarvis/kiosk/server`), opens the
 * Realtime WebSocket with it, streams the microphone as 24 kHz PCM16 and plays the answer's
 * audio. The session itself (voice, instructions, turn detection) is set by the server when
 * it mints the secret, so nothing of it is in the kiosk.
 */
import type { LegacyVoiceProvider } from "./legacy.js";

export interface OpenAIRealtimeConfig {
  /** The Realtime API's base URL (https; the WebSocket is the same URL in wss). */
  endpoint: string;
  model: string;
}

/** What the chain's app uses today (the seed's voiceConfig.ts, provider "openai"). */
export const SEED_OPENAI_REALTIME: Readonly<OpenAIRealtimeConfig> = {
  endpoint: "https://api.openai.com/v1/realtime",
  model: "gpt-4o-mini-realtime-preview",
};

/** What the gym's server route hands the kiosk: a client secret, and where to use it. */
export interface RealtimeClientSecret {
  value: string;
  endpoint?: string;
  model?: string;
}

export interface OpenAIRealtimeProviderOptions {
  /** Gets a client secret from the gym's server (never the API key itself). */
  clientSecret: () => Promise<RealtimeClientSecret>;
  config?: OpenAIRealtimeConfig;
  /** Called when the provider's connection ends by itself (not after stop()). */
  onClosed?: (reason: string) => void;
  microphone?: MediaTrackConstraints;
  connectTimeoutMs?: number;
  logger?: Pick<Console, "info" | "warn" | "error">;
}

const SAMPLE_RATE = 24_000;

// Posts the microphone's samples to the main thread in ~40 ms chunks (960 samples at 24 kHz).
const CAPTURE_WORKLET = `
class Capture extends AudioWorkletProcessor {
  constructor() { super(); this.chunk = new Float32Array(960); this.filled = 0; }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      for (let i = 0; i < input.length; i++) {
        this.chunk[this.filled++] = input[i];
        if (this.filled === this.chunk.length) { this.port.postMessage(this.chunk.slice()); this.filled = 0; }
      }
    }
    return true;
  }
}
registerProcessor("jarvis-legacy-capture", Capture);
`;

export class OpenAIRealtimeProvider implements LegacyVoiceProvider {
  private socket: WebSocket | null = null;
  private context: AudioContext | null = null;
  private stream: MediaStream | null = null;
  private playhead = 0;
  private played = 0;
  private stopping = false;
  private readonly logger: Pick<Console, "info" | "warn" | "error">;

  constructor(private readonly options: OpenAIRealtimeProviderOptions) {
    this.logger = options.logger ?? console;
  }

  /** Seconds of the provider's answer audio queued for playback so far (diagnostics). */
  get playedSeconds(): number {
    return this.played;
  }

  async start(): Promise<void> {
    this.stopping = false;
    const secret = await this.options.clientSecret();
    const config = this.options.config ?? SEED_OPENAI_REALTIME;
    const endpoint = (secret.endpoint ?? config.endpoint).replace(/^http/, "ws");
    const model = secret.model ?? config.model;
    try {
      // Created first, in the member's tap, so the browser lets it play sound.
      this.context = new AudioContext({ sampleRate: SAMPLE_RATE });
      this.socket = await this.open(`${endpoint}?model=${encodeURIComponent(model)}`, secret.value);
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: this.options.microphone ?? { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      await this.streamMicrophone(this.context, this.stream);
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.socket?.close(1000, "kiosk session ended");
    this.socket = null;
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
    const context = this.context;
    this.context = null;
    if (context && context.state !== "closed") await context.close();
  }

  private open(url: string, secret: string): Promise<WebSocket> {
    // Browsers cannot set headers on a WebSocket: the Realtime API takes the client secret as a
    // subprotocol (it is short-lived and scoped to one session, unlike the API key).
    const socket = new WebSocket(url, ["realtime", `openai-insecure-api-key.${secret}`, "openai-beta.realtime-v1"]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.close();
        reject(new Error("the legacy provider did not answer in time"));
      }, this.options.connectTimeoutMs ?? 10_000);
      socket.onopen = () => {
        clearTimeout(timer);
        socket.onmessage = (event) => this.onMessage(event);
        socket.onclose = (event) => {
          if (!this.stopping) this.options.onClosed?.(`closed ${event.code}`);
        };
        resolve(socket);
      };
      socket.onerror = () => {
        clearTimeout(timer);
        reject(new Error("the legacy provider refused the connection"));
      };
    });
  }

  private async streamMicrophone(context: AudioContext, stream: MediaStream): Promise<void> {
    const module = URL.createObjectURL(new Blob([CAPTURE_WORKLET], { type: "text/javascript" }));
    try {
      await context.audioWorklet.addModule(module);
    } finally {
      URL.revokeObjectURL(module);
    }
    const capture = new AudioWorkletNode(context, "jarvis-legacy-capture");
    capture.port.onmessage = (event: MessageEvent<Float32Array>) => {
      if (this.socket?.readyState !== WebSocket.OPEN) return;
      this.socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: pcm16Base64(event.data) }));
    };
    context.createMediaStreamSource(stream).connect(capture);
    await context.resume();
  }

  private onMessage(event: MessageEvent): void {
    let message: { type?: unknown; delta?: unknown; error?: { message?: unknown } };
    try {
      message = JSON.parse(String(event.data)) as typeof message;
    } catch {
      return;
    }
    // "response.audio.delta" in the preview API, "response.output_audio.delta" in the GA one.
    if ((message.type === "response.audio.delta" || message.type === "response.output_audio.delta") && typeof message.delta === "string") {
      this.play(message.delta);
    } else if (message.type === "error") {
      this.logger.warn("[jarvis-kiosk] legacy provider error", String(message.error?.message ?? "unknown"));
    }
  }

  /** Queues one chunk of the answer's audio right after the previous one. */
  private play(base64: string): void {
    const context = this.context;
    if (!context) return;
    const samples = pcm16ToFloat(base64);
    if (samples.length === 0) return;
    const buffer = context.createBuffer(1, samples.length, SAMPLE_RATE);
    buffer.getChannelData(0).set(samples);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    this.playhead = Math.max(this.playhead, context.currentTime);
    source.start(this.playhead);
    this.playhead += buffer.duration;
    this.played += buffer.duration;
  }
}

export function pcm16Base64(samples: Float32Array): string {
  const bytes = new Uint8Array(samples.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i] ?? 0));
    view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function pcm16ToFloat(base64: string): Float32Array {
  const binary = atob(base64);
  const samples = new Float32Array(Math.floor(binary.length / 2));
  for (let i = 0; i < samples.length; i++) {
    const value = binary.charCodeAt(2 * i) | (binary.charCodeAt(2 * i + 1) << 8);
    samples[i] = (value >= 0x8000 ? value - 0x10000 : value) / 0x8000;
  }
  return samples;
}

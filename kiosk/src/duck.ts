/**
 * Barge-in, the kiosk's half: JARVIS's voice ducks the moment the member's own microphone carries
 * sound, before any packet has left the kiosk.
 *
 * The agent decides whether it was speech (silero, then its own confirmation) and pauses or stops
 * the answer; that takes the audio's trip to the agent and back, about 250 ms. Ducking here costs
 * two microphone readings. A cough or a dropped weight ducks JARVIS too, but ducking loses nothing:
 * the answer keeps playing underneath and comes back to full volume once the microphone has been
 * quiet for `holdMs`. The microphone is read after the browser's echo cancellation, so JARVIS's
 * own voice does not duck it.
 */

export interface BargeInDuckOptions {
  /** Microphone level (RMS, dBFS) counted as the member making a sound (default -40). */
  thresholdDb?: number;
  /** How long the level must hold before JARVIS ducks (ms, default 10: two 10 ms readings). */
  onsetMs?: number;
  /** Quiet needed before JARVIS's voice comes back to full volume (ms, default 400). */
  holdMs?: number;
  /** JARVIS's volume while ducked, 0 to 1 (default 0.1, about -20 dB). */
  gain?: number;
}

export const DUCK_DEFAULTS: Required<BargeInDuckOptions> = { thresholdDb: -40, onsetMs: 10, holdMs: 400, gain: 0.1 };

/** RMS of float samples in [-1, 1], in dBFS (-Infinity for silence). */
export function levelDb(samples: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i]! * samples[i]!;
  return samples.length === 0 ? -Infinity : 10 * Math.log10(sum / samples.length);
}

/** Decides, from successive microphone levels, when JARVIS's volume ducks and when it comes back. */
export class BargeInDuck {
  private readonly options: Required<BargeInDuckOptions>;
  private soundSince: number | null = null;
  private lastSound = -Infinity;
  private isDucked = false;

  constructor(
    options: BargeInDuckOptions,
    private readonly setGain: (gain: number) => void,
  ) {
    this.options = { ...DUCK_DEFAULTS, ...options };
    if (!(this.options.gain >= 0 && this.options.gain <= 1)) throw new RangeError("duck gain must be within 0..1");
  }

  get ducked(): boolean {
    return this.isDucked;
  }

  /** JARVIS's volume now: the duck gain while ducked, else 1. */
  get gain(): number {
    return this.isDucked ? this.options.gain : 1;
  }

  /** One microphone reading: its level in dBFS, taken at `atMs` (any monotonic clock). */
  feed(level: number, atMs: number): void {
    const { thresholdDb, onsetMs, holdMs, gain } = this.options;
    if (level >= thresholdDb) {
      this.soundSince ??= atMs;
      this.lastSound = atMs;
      if (!this.isDucked && atMs - this.soundSince >= onsetMs) {
        this.isDucked = true;
        this.setGain(gain);
      }
      return;
    }
    this.soundSince = null;
    if (this.isDucked && atMs - this.lastSound >= holdMs) this.release();
  }

  /** Full volume again at once (the agent stopped, the session ended). */
  release(): void {
    this.soundSince = null;
    if (!this.isDucked) return;
    this.isDucked = false;
    this.setGain(1);
  }
}

/**
 * Audio level meters for the kiosk page's diagnostics (and the browser tests / bench):
 * they measure what the browser really captured and really received, sample by sample,
 * with the Web Audio API, timestamped on the page's clock (performance.now()).
 */

export interface LevelSample {
  /** performance.now() in ms. */
  t: number;
  /** RMS of the last analysis window, 0..1. */
  rms: number;
}

const MAX_SAMPLES = 30_000; // 10 min at one sample every 20 ms

export class LevelMeter {
  readonly samples: LevelSample[] = [];
  private timer: ReturnType<typeof setInterval> | null = null;
  private source: MediaStreamAudioSourceNode | null = null;

  constructor(
    private readonly context: AudioContext,
    private readonly intervalMs = 20,
  ) {}

  attach(track: MediaStreamTrack): void {
    this.detach();
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 1024;
    this.source = this.context.createMediaStreamSource(new MediaStream([track]));
    this.source.connect(analyser);
    const buffer = new Float32Array(analyser.fftSize);
    this.timer = setInterval(() => {
      analyser.getFloatTimeDomainData(buffer);
      let sum = 0;
      for (const value of buffer) sum += value * value;
      this.samples.push({ t: performance.now(), rms: Math.sqrt(sum / buffer.length) });
      if (this.samples.length > MAX_SAMPLES) this.samples.splice(0, this.samples.length - MAX_SAMPLES);
    }, this.intervalMs);
  }

  detach(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.source?.disconnect();
    this.source = null;
  }

  /** Highest RMS seen since `sinceMs` (performance.now() clock). */
  peakSince(sinceMs = 0): number {
    let peak = 0;
    for (const sample of this.samples) if (sample.t >= sinceMs && sample.rms > peak) peak = sample.rms;
    return peak;
  }
}

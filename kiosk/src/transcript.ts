/**
 * The live transcript, built from LiveKit transcription text streams (topic
 * `lk.transcription`). One segment id may arrive as several streams (interim results
 * that replace each other, then a final one); inside one stream, chunks are deltas.
 */

export const TRANSCRIPTION_TOPIC = "lk.transcription";
export const ATTR_SEGMENT_ID = "lk.segment_id";
export const ATTR_TRANSCRIPTION_FINAL = "lk.transcription_final";

export type Speaker = "member" | "agent";

export interface TranscriptLine {
  id: string;
  speaker: Speaker;
  text: string;
  final: boolean;
}

export class Transcript {
  private readonly lines: TranscriptLine[] = [];

  constructor(private readonly maxLines = 50) {}

  /** A new stream starts for a segment: its text replaces the segment's previous interim text. */
  beginSegment(id: string, speaker: Speaker, final: boolean): void {
    const existing = this.lines.find((line) => line.id === id);
    if (existing) {
      existing.text = "";
      existing.final = final;
      existing.speaker = speaker;
      return;
    }
    this.lines.push({ id, speaker, text: "", final });
    if (this.lines.length > this.maxLines) this.lines.splice(0, this.lines.length - this.maxLines);
  }

  appendDelta(id: string, delta: string): void {
    const line = this.lines.find((l) => l.id === id);
    if (line) line.text += delta;
  }

  markFinal(id: string): void {
    const line = this.lines.find((l) => l.id === id);
    if (line) line.final = true;
  }

  /** Lines with text, oldest first (copies: callers may keep them). */
  snapshot(): TranscriptLine[] {
    return this.lines.filter((l) => l.text.trim() !== "").map((l) => ({ ...l }));
  }

  clear(): void {
    this.lines.length = 0;
  }
}

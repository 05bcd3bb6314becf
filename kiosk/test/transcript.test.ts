import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Transcript } from "../src/transcript.js";

describe("live transcript", () => {
  it("builds the agent's sentence from streamed deltas", () => {
    const transcript = new Transcript();
    transcript.beginSegment("seg-1", "agent", false);
    transcript.appendDelta("seg-1", "Bonjour ");
    transcript.appendDelta("seg-1", "Camille !");
    transcript.markFinal("seg-1");
    assert.deepEqual(transcript.snapshot(), [{ id: "seg-1", speaker: "agent", text: "Bonjour Camille !", final: true }]);
  });

  it("replaces the member's interim words with the next stream of the same segment", () => {
    const transcript = new Transcript();
    transcript.beginSegment("u-1", "member", false);
    transcript.appendDelta("u-1", "je veux un tuto");
    transcript.beginSegment("u-1", "member", true);
    transcript.appendDelta("u-1", "Je veux un tuto pour le squat.");
    assert.deepEqual(transcript.snapshot(), [
      { id: "u-1", speaker: "member", text: "Je veux un tuto pour le squat.", final: true },
    ]);
  });

  it("hides empty segments and keeps only the most recent lines", () => {
    const transcript = new Transcript(2);
    for (const id of ["a", "b", "c"]) {
      transcript.beginSegment(id, "agent", true);
      transcript.appendDelta(id, id.toUpperCase());
    }
    transcript.beginSegment("empty", "member", false);
    assert.deepEqual(
      transcript.snapshot().map((line) => line.text),
      ["C"],
    );
  });
});

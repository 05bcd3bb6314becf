import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { BargeInDuck, levelDb } from "../src/duck.js";

/** Feeds one level per 10 ms reading, from `startMs`. */
function play(duck: BargeInDuck, levels: number[], startMs = 0): void {
  levels.forEach((level, i) => duck.feed(level, startMs + 10 * i));
}

const QUIET = -70;
const VOICE = -25;

describe("barge-in duck", () => {
  it("member starts talking over JARVIS → its voice ducks at the second loud reading, before any packet left", () => {
    const gains: number[] = [];
    const duck = new BargeInDuck({}, (gain) => gains.push(gain));
    play(duck, [QUIET, QUIET, VOICE]);
    assert.deepEqual(gains, [], "one loud reading is not yet the member");
    duck.feed(VOICE, 30);
    assert.deepEqual(gains, [0.1]);
    assert.equal(duck.ducked, true);
  });

  it("a single click does not duck; the member's voice holds JARVIS down while they talk", () => {
    const gains: number[] = [];
    const duck = new BargeInDuck({}, (gain) => gains.push(gain));
    play(duck, [VOICE, QUIET, VOICE, QUIET, QUIET]);
    assert.deepEqual(gains, []);
    // two seconds of a sentence with short gaps between words (under the 400 ms hold)
    const sentence = Array.from({ length: 200 }, (_, i) => (i % 25 < 20 ? VOICE : QUIET));
    play(duck, sentence, 100);
    assert.deepEqual(gains, [0.1], "ducked once, never released mid-sentence");
  });

  it("a dropped weight ducks JARVIS, and its voice comes back after 400 ms of quiet: no word lost", () => {
    const gains: number[] = [];
    const duck = new BargeInDuck({ holdMs: 400 }, (gain) => gains.push(gain));
    play(duck, [VOICE, VOICE, VOICE, ...Array<number>(50).fill(QUIET)]);
    assert.deepEqual(gains, [0.1, 1]);
    assert.equal(duck.ducked, false);
  });

  it("keeps JARVIS ducked until 400 ms after the last sound, not after the first quiet reading", () => {
    const gains: number[] = [];
    const duck = new BargeInDuck({}, (gain) => gains.push(gain));
    play(duck, [VOICE, VOICE]);
    duck.feed(QUIET, 390);
    assert.deepEqual(gains, [0.1]);
    duck.feed(QUIET, 410);
    assert.deepEqual(gains, [0.1, 1]);
  });

  it("release() gives full volume at once, and only when ducked", () => {
    const gains: number[] = [];
    const duck = new BargeInDuck({}, (gain) => gains.push(gain));
    duck.release();
    play(duck, [VOICE, VOICE]);
    duck.release();
    assert.deepEqual(gains, [0.1, 1]);
    assert.equal(duck.gain, 1);
  });

  it("refuses a gain outside 0..1", () => {
    assert.throws(() => new BargeInDuck({ gain: 2 }, () => undefined), RangeError);
  });

  it("measures levels in dBFS", () => {
    assert.equal(levelDb(new Float32Array(480)), -Infinity);
    assert.ok(Math.abs(levelDb(new Float32Array(480).fill(0.1)) - -20) < 1e-6);
    assert.equal(levelDb([]), -Infinity);
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { JarvisKiosk } from "../src/kiosk.js";
import { fallbackReasonOf, type LegacyVoiceProvider } from "../src/legacy.js";
import { pcm16Base64, pcm16ToFloat } from "../src/openai-realtime.js";
import { validateShowVideoPayload } from "../src/rpc.js";
import type { KioskState } from "../src/state.js";

/** A previous provider that records what the kiosk asks of it. */
class RecordingProvider implements LegacyVoiceProvider {
  calls: string[] = [];
  constructor(private readonly failStart = false) {}
  async start(): Promise<void> {
    this.calls.push("start");
    if (this.failStart) throw new Error("provider down");
  }
  async stop(): Promise<void> {
    this.calls.push("stop");
  }
}

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

describe("fallback to the previous provider", () => {
  it("recognises the token service's codes that mean the previous provider, whatever the status", () => {
    assert.equal(fallbackReasonOf({ code: "jarvis_disabled", detail: "off" }), "jarvis_disabled");
    assert.equal(fallbackReasonOf({ code: "over_capacity" }), "over_capacity");
    assert.equal(fallbackReasonOf({ code: "forbidden" }), null);
    assert.equal(fallbackReasonOf({ error: "jarvis_disabled" }), null);
    assert.equal(fallbackReasonOf(null), null);
    assert.equal(fallbackReasonOf("jarvis_disabled"), null);
  });

  it("starts the provider on fallBack, shows the legacy state, and stops it when the member ends", async () => {
    const provider = new RecordingProvider();
    const kiosk = new JarvisKiosk({ legacy: provider, logger: quiet });
    const states: KioskState[] = [];
    const reasons: string[] = [];
    kiosk.on("state", (state) => states.push(state));
    kiosk.on("fallback", ({ reason }) => reasons.push(reason));
    assert.equal(await kiosk.fallBack("jarvis_disabled"), true);
    assert.equal(kiosk.provider, "legacy");
    assert.equal(kiosk.state, "legacy");
    await kiosk.end();
    assert.deepEqual(provider.calls, ["start", "stop"]);
    assert.deepEqual(reasons, ["jarvis_disabled"]);
    assert.deepEqual(states, ["legacy", "ended"]);
    assert.equal(kiosk.provider, null);
  });

  it("tells the member as before when there is no provider, or it cannot start", async () => {
    assert.equal(await new JarvisKiosk({ logger: quiet }).fallBack("over_capacity"), false);
    const provider = new RecordingProvider(true);
    const kiosk = new JarvisKiosk({ legacy: provider, logger: quiet });
    const errors: string[] = [];
    kiosk.on("error", (error) => errors.push(error.code));
    assert.equal(await kiosk.fallBack("over_capacity"), false);
    assert.deepEqual(errors, ["session_unavailable"]);
    assert.equal(kiosk.state, "ended");
    assert.deepEqual(provider.calls, ["start", "stop"], "a provider that failed to start is still released");
  });
});

describe("tutorial clips and audio", () => {
  it("resolves a catalogue path against the kiosk page, and still refuses other schemes", () => {
    const base = "http://127.0.0.1:8090/?agentTimeoutMs=8000";
    assert.deepEqual(validateShowVideoPayload(JSON.stringify({ url: "/videos/lyon/squat.mp4", title: "Squat" }), base), {
      ok: true,
      video: { url: "http://127.0.0.1:8090/videos/lyon/squat.mp4", title: "Squat" },
    });
    assert.deepEqual(validateShowVideoPayload(JSON.stringify({ url: "/videos/lyon/squat.mp4" })), {
      ok: false,
      reason: "invalid_url",
    });
    assert.deepEqual(validateShowVideoPayload(JSON.stringify({ url: "javascript:alert(1)" }), base), {
      ok: false,
      reason: "unsupported_url_scheme",
    });
  });

  it("encodes the microphone as PCM16 and decodes the answer back", () => {
    const samples = new Float32Array([0, 0.5, -0.5, 1, -1, 2]);
    const decoded = pcm16ToFloat(pcm16Base64(samples));
    assert.equal(decoded.length, samples.length);
    const expected = [0, 0.5, -0.5, 1, -1, 1];
    decoded.forEach((value, i) => assert.ok(Math.abs(value - expected[i]!) < 1e-3, `${i}: ${value}`));
  });
});

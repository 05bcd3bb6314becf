import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { deriveKioskState, INITIAL_INPUTS, KioskStateMachine, type KioskState } from "../src/state.js";

describe("kiosk state", () => {
  it("is idle before a badge is scanned", () => {
    assert.equal(deriveKioskState(INITIAL_INPUTS), "idle");
  });

  it("follows the agent's lk.agent.state once the agent is in the room", () => {
    const base = { ...INITIAL_INPUTS, started: true, connection: "connected" as const, agentPresent: true };
    assert.equal(deriveKioskState({ ...base, agentState: "initializing" }), "waiting_agent");
    assert.equal(deriveKioskState({ ...base, agentState: "listening" }), "listening");
    assert.equal(deriveKioskState({ ...base, agentState: "idle" }), "listening");
    assert.equal(deriveKioskState({ ...base, agentState: "thinking" }), "thinking");
    assert.equal(deriveKioskState({ ...base, agentState: "speaking" }), "speaking");
    assert.equal(deriveKioskState({ ...base, agentState: "some-future-state" }), "waiting_agent");
  });

  it("waits for the agent while connected without one, and shows a network blip as reconnecting", () => {
    const started = { ...INITIAL_INPUTS, started: true };
    assert.equal(deriveKioskState({ ...started, connection: "connecting" }), "connecting");
    assert.equal(deriveKioskState({ ...started, connection: "connected" }), "waiting_agent");
    assert.equal(
      deriveKioskState({ ...started, connection: "reconnecting", agentPresent: true, agentState: "speaking" }),
      "reconnecting",
    );
    assert.equal(deriveKioskState({ ...started, connection: "disconnected" }), "ended");
  });

  it("reports each change once, in order, through a whole conversation", () => {
    const seen: KioskState[] = [];
    const machine = new KioskStateMachine((state) => seen.push(state));
    machine.update({ started: true, connection: "connecting" });
    machine.update({ connection: "connected" });
    machine.update({ agentPresent: true, agentState: "initializing" });
    machine.update({ agentState: "speaking" });
    machine.update({ agentState: "speaking" }); // a repeated attribute is not a change
    machine.update({ agentState: "listening" });
    machine.update({ connection: "reconnecting" });
    machine.update({ connection: "connected" });
    machine.update({ agentState: "thinking" });
    machine.update({ ended: true, connection: "disconnected" });
    assert.deepEqual(seen, [
      "connecting",
      "waiting_agent",
      "speaking",
      "listening",
      "reconnecting",
      "listening",
      "thinking",
      "ended",
    ]);
  });

  it("stays ended when late LiveKit events arrive after the session closed", () => {
    const machine = new KioskStateMachine(() => {});
    machine.update({ started: true, connection: "connected", agentPresent: true, agentState: "listening" });
    machine.update({ ended: true });
    assert.equal(machine.update({ ended: false, connection: "connected", agentState: "speaking" }), "ended");
  });

  it("starts over as idle for the next member", () => {
    const seen: KioskState[] = [];
    const machine = new KioskStateMachine((state) => seen.push(state));
    machine.update({ started: true, connection: "connected", ended: true });
    machine.reset();
    assert.equal(machine.state, "idle");
    assert.deepEqual(seen, ["ended", "idle"]);
    assert.equal(machine.update({ started: true, connection: "connecting" }), "connecting");
  });
});

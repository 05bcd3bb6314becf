import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { classifyDisconnect, Reconnector } from "../src/reconnect.js";

class Refused extends Error {}

function recorder(): { sleeps: number[]; sleep: (ms: number) => Promise<void> } {
  const sleeps: number[] = [];
  return { sleeps, sleep: async (ms) => void sleeps.push(ms) };
}

const classify = (error: unknown) => ({ tokenRefused: error instanceof Refused });

describe("reconnect policy", () => {
  it("rejoins after a network blip on the first attempt that works, waiting longer each time", async () => {
    const clock = recorder();
    const reconnector = new Reconnector({ delaysMs: [100, 200, 400, 800] }, clock.sleep);
    let calls = 0;
    const attempts: number[] = [];
    const outcome = await reconnector.run(
      async () => {
        calls += 1;
        if (calls < 3) throw new Error("websocket closed");
      },
      classify,
      (n) => attempts.push(n),
    );
    assert.equal(outcome, "reconnected");
    assert.deepEqual(clock.sleeps, [100, 200, 400]);
    assert.deepEqual(attempts, [1, 2, 3]);
  });

  it("gives up after the last attempt, so the member is told the network dropped", async () => {
    const clock = recorder();
    const reconnector = new Reconnector({ delaysMs: [10, 20] }, clock.sleep);
    let calls = 0;
    const outcome = await reconnector.run(async () => {
      calls += 1;
      throw new Error("unreachable");
    }, classify);
    assert.equal(outcome, "gave_up");
    assert.equal(calls, 2);
  });

  it("stops at once when the server refuses the token (expired session)", async () => {
    const reconnector = new Reconnector({ delaysMs: [1, 1, 1, 1] }, recorder().sleep);
    let calls = 0;
    const outcome = await reconnector.run(async () => {
      calls += 1;
      throw new Refused("401");
    }, classify);
    assert.equal(outcome, "token_refused");
    assert.equal(calls, 1);
  });

  it("stops when the member ends the session during the wait", async () => {
    let release: () => void = () => {};
    const reconnector = new Reconnector({ delaysMs: [1000] }, () => new Promise<void>((r) => (release = r)));
    let calls = 0;
    const running = reconnector.run(async () => void (calls += 1), classify);
    assert.equal(reconnector.isRunning, true);
    reconnector.cancel();
    release();
    assert.equal(await running, "cancelled");
    assert.equal(calls, 0);
    assert.equal(reconnector.isRunning, false);
  });

  it("refuses to run two reconnections at once", async () => {
    let release: () => void = () => {};
    const reconnector = new Reconnector({ delaysMs: [1] }, () => new Promise<void>((r) => (release = r)));
    const first = reconnector.run(async () => {}, classify);
    await assert.rejects(reconnector.run(async () => {}, classify), /already running/);
    release();
    assert.equal(await first, "reconnected");
  });

  it("retries only when the network (not the member or the server) ended the room", () => {
    const retried = (reason: number | undefined) => Reconnector.shouldRetry(classifyDisconnect(reason));
    assert.equal(retried(undefined), true); // no reason given
    assert.equal(retried(0), true); // UNKNOWN_REASON
    assert.equal(retried(9), true); // SIGNAL_CLOSE
    assert.equal(retried(14), true); // CONNECTION_TIMEOUT
    assert.equal(retried(1), false); // CLIENT_INITIATED: the member pressed end
    assert.equal(retried(2), false); // DUPLICATE_IDENTITY
    assert.equal(retried(4), false); // PARTICIPANT_REMOVED
    assert.equal(retried(5), false); // ROOM_DELETED: the agent closed the session
  });
});

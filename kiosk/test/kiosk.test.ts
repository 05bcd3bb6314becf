import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ConnectionError } from "livekit-client";

import { isTokenRefused, scheduledPolicy } from "../src/kiosk.js";

describe("kiosk connection policy", () => {
  it("follows the configured blip retry schedule, then lets livekit-client give up", () => {
    const policy = scheduledPolicy([200, 400, 800]);
    const delays = [0, 1, 2, 3].map((retryCount) => policy.nextRetryDelayInMs({ retryCount, elapsedMs: 0 }));
    assert.deepEqual(delays, [200, 400, 800, null]);
  });

  it("treats a 401/403 from LiveKit as a refused (expired) token, and nothing else", () => {
    assert.equal(isTokenRefused(ConnectionError.notAllowed("token expired", 401)), true);
    assert.equal(isTokenRefused(ConnectionError.notAllowed("no permission", 403)), true);
    assert.equal(isTokenRefused(ConnectionError.timeout("server unreachable")), false);
    assert.equal(isTokenRefused(new Error("401")), false);
  });
});

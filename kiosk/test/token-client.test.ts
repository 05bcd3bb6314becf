import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { JarvisTokenClient, TokenApiError } from "../src/token-client.js";

interface Call {
  url: string;
  init: RequestInit;
}

function fakeFetch(status: number, body: unknown, headers: Record<string, string> = {}): {
  calls: Call[];
  fetch: typeof fetch;
} {
  const calls: Call[] = [];
  const impl = async (url: string | URL | Request, init?: RequestInit) => {
    calls.push({ url: String(url), init: init ?? {} });
    return new Response(JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json", ...headers },
    });
  };
  return { calls, fetch: impl as typeof fetch };
}

const SESSION = {
  session_id: "0b7e1c2a-0000-4000-8000-000000000001",
  room: "jarvis-0b7e1c2a",
  token: "eyJ.fake.token",
  livekit_url: "ws://127.0.0.1:7880",
  expires_at: "2026-11-26T16:00:00Z",
  member_first_name: "Camille",
};

describe("token API client", () => {
  it("posts the badge and kiosk with the gym key as a bearer token, and returns the session", async () => {
    const fake = fakeFetch(201, SESSION);
    const client = new JarvisTokenClient({ baseUrl: "http://127.0.0.1:8080/", gymKey: "demo-key", fetch: fake.fetch });
    const session = await client.createSession({ badge_id: "LYON-0001", kiosk_id: "kiosk-accueil" });
    assert.deepEqual(session, SESSION);
    assert.equal(fake.calls.length, 1);
    const call = fake.calls[0]!;
    assert.equal(call.url, "http://127.0.0.1:8080/v1/sessions");
    assert.equal(call.init.method, "POST");
    assert.equal((call.init.headers as Record<string, string>)["authorization"], "Bearer demo-key");
    assert.deepEqual(JSON.parse(call.init.body as string), { badge_id: "LYON-0001", kiosk_id: "kiosk-accueil" });
  });

  const failures: Array<[number, string]> = [
    [401, "unauthorized"],
    [403, "forbidden"],
    [404, "member_not_found"],
    [422, "invalid_request"],
    [503, "unavailable"],
    [500, "unexpected"],
  ];
  for (const [status, code] of failures) {
    it(`turns HTTP ${status} into a typed "${code}" error carrying the service's detail`, async () => {
      const fake = fakeFetch(status, { detail: `detail for ${status}` });
      const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "k", fetch: fake.fetch });
      await assert.rejects(client.createSession({ badge_id: "BDX-0001", kiosk_id: "kiosk-accueil" }), (error) => {
        assert.ok(error instanceof TokenApiError);
        assert.equal(error.status, status);
        assert.equal(error.code, code);
        assert.equal(error.detail, `detail for ${status}`);
        return true;
      });
    });
  }

  it("reports how long to wait when rate limited", async () => {
    const fake = fakeFetch(429, { detail: "too many sessions" }, { "retry-after": "12" });
    const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "k", fetch: fake.fetch });
    await assert.rejects(client.createSession({ badge_id: "LYON-0001", kiosk_id: "k1" }), (error) => {
      assert.ok(error instanceof TokenApiError);
      assert.equal(error.code, "rate_limited");
      assert.equal(error.retryAfterSeconds, 12);
      return true;
    });
  });

  it("reads the body's code: jarvis_disabled (403) and over_capacity (503 + Retry-After) say to fall back", async () => {
    const disabled = fakeFetch(403, { code: "jarvis_disabled", detail: "use the current provider" });
    const full = fakeFetch(503, { code: "over_capacity", detail: "full" }, { "retry-after": "5" });
    for (const [fake, code, retry] of [[disabled, "jarvis_disabled", undefined], [full, "over_capacity", 5]] as const) {
      const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "k", fetch: fake.fetch });
      await assert.rejects(client.createSession({ badge_id: "LYON-0001", kiosk_id: "k1" }), (error) => {
        assert.ok(error instanceof TokenApiError);
        assert.equal(error.code, code);
        assert.equal(error.retryAfterSeconds, retry);
        return true;
      });
    }
  });

  it("reads the token service's own codes: another gym's badge (404 unknown_badge) and a wrong key are no fallback", async () => {
    const cases = [
      [404, "unknown_badge", "member_not_found"],
      [404, "inactive_badge", "member_not_found"],
      [401, "bad_api_key", "unauthorized"],
      [503, "database_unavailable", "unavailable"],
      [403, "some_new_refusal", "forbidden"],
    ] as const;
    for (const [status, serviceCode, code] of cases) {
      const fake = fakeFetch(status, { code: serviceCode, detail: "refused" });
      const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "k", fetch: fake.fetch });
      await assert.rejects(client.createSession({ badge_id: "LYON-0001", kiosk_id: "k1" }), (error) => {
        assert.ok(error instanceof TokenApiError);
        assert.equal(error.code, code);
        assert.equal(error.serviceCode, serviceCode);
        assert.equal(error.fallback, null, `${status} ${serviceCode} must not send the kiosk to the old provider`);
        return true;
      });
    }
  });

  it("says which refusals send the kiosk to the previous provider", async () => {
    for (const [status, code] of [[403, "jarvis_disabled"], [503, "over_capacity"]] as const) {
      const fake = fakeFetch(status, { code, detail: "use the current provider" });
      const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "k", fetch: fake.fetch });
      await assert.rejects(client.createSession({ badge_id: "LYON-0001", kiosk_id: "k1" }), (error) => {
        assert.ok(error instanceof TokenApiError);
        assert.equal(error.fallback, code);
        return true;
      });
    }
  });

  it("honours over_capacity's Retry-After: the next badges are refused at once, without asking, until it passes", async () => {
    let now = 1_000_000;
    const full = fakeFetch(503, { code: "over_capacity", detail: "full" }, { "retry-after": "5" });
    let answer = full;
    const fetchNow = ((url: string | URL | Request, init?: RequestInit) => answer.fetch(url, init)) as typeof fetch;
    const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "k", fetch: fetchNow, now: () => now });
    const refusal = (left: number) => (error: unknown) => {
      assert.ok(error instanceof TokenApiError);
      assert.equal(error.fallback, "over_capacity");
      assert.equal(error.retryAfterSeconds, left);
      return true;
    };
    await assert.rejects(client.createSession({ badge_id: "LYON-0001", kiosk_id: "k1" }), refusal(5));
    answer = fakeFetch(201, SESSION);
    now += 3_200;
    await assert.rejects(client.createSession({ badge_id: "LYON-0002", kiosk_id: "k2" }), refusal(2));
    assert.equal(full.calls.length, 1);
    assert.equal(answer.calls.length, 0, "the full service is not asked while Retry-After lasts");
    now += 1_800;
    assert.deepEqual(await client.createSession({ badge_id: "LYON-0002", kiosk_id: "k2" }), SESSION);
    assert.equal(answer.calls.length, 1);
  });

  it("reports an unreachable service as unavailable, without leaking the key", async () => {
    const failing = (async () => {
      throw new TypeError("fetch failed");
    }) as typeof fetch;
    const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "secret-gym-key", fetch: failing });
    await assert.rejects(client.createSession({ badge_id: "LYON-0001", kiosk_id: "k1" }), (error) => {
      assert.ok(error instanceof TokenApiError);
      assert.equal(error.code, "unavailable");
      assert.equal(error.status, 0);
      assert.ok(!error.message.includes("secret-gym-key"));
      return true;
    });
  });

  it("refuses a success response that lacks the token", async () => {
    const { token: _dropped, ...incomplete } = SESSION;
    const fake = fakeFetch(200, incomplete);
    const client = new JarvisTokenClient({ baseUrl: "http://t", gymKey: "k", fetch: fake.fetch });
    await assert.rejects(client.createSession({ badge_id: "LYON-0001", kiosk_id: "k1" }), /lacks "token"/);
  });

  it("needs a gym key", () => {
    assert.throws(() => new JarvisTokenClient({ baseUrl: "http://t", gymKey: "" }), /gym's API key/);
  });
});

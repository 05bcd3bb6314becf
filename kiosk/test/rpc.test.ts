import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  answerShowVideo,
  MAX_SHOW_VIDEO_PAYLOAD_BYTES,
  validateShowVideoPayload,
  type KioskVideo,
  type ShowVideoRejection,
} from "../src/rpc.js";

function rejection(payload: string): ShowVideoRejection | "accepted" {
  const result = validateShowVideoPayload(payload);
  return result.ok ? "accepted" : result.reason;
}

describe("kiosk.show_video payload", () => {
  it("accepts an https tutorial with its title", () => {
    const result = validateShowVideoPayload(
      JSON.stringify({ url: "https://videos.example.com/squat.mp4", title: "Le squat, pas à pas" }),
    );
    assert.deepEqual(result, {
      ok: true,
      video: { url: "https://videos.example.com/squat.mp4", title: "Le squat, pas à pas" },
    });
  });

  it("accepts plain http (a gym's local media server) and a missing title", () => {
    const result = validateShowVideoPayload(JSON.stringify({ url: "http://192.0.2.10/rameur.mp4" }));
    assert.deepEqual(result, { ok: true, video: { url: "http://192.0.2.10/rameur.mp4", title: "" } });
  });

  it("refuses a payload without url", () => {
    assert.equal(rejection(JSON.stringify({ title: "Squat" })), "missing_url");
    assert.equal(rejection(JSON.stringify({ url: "", title: "Squat" })), "missing_url");
  });

  it("refuses javascript:, data: and file: urls, whatever their case or spacing", () => {
    assert.equal(rejection(JSON.stringify({ url: "javascript:alert(1)", title: "x" })), "unsupported_url_scheme");
    assert.equal(rejection(JSON.stringify({ url: "  JavaScript:alert(1)", title: "x" })), "unsupported_url_scheme");
    assert.equal(rejection(JSON.stringify({ url: "data:text/html,<script>", title: "x" })), "unsupported_url_scheme");
    assert.equal(rejection(JSON.stringify({ url: "file:///etc/passwd", title: "x" })), "unsupported_url_scheme");
  });

  it("refuses what is not a url, not a string, or not an object", () => {
    assert.equal(rejection(JSON.stringify({ url: "squat.mp4" })), "invalid_url");
    assert.equal(rejection(JSON.stringify({ url: 42 })), "invalid_url");
    assert.equal(rejection(JSON.stringify({ url: "https://a.example/v.mp4", title: ["x"] })), "invalid_title");
    assert.equal(rejection("[1, 2]"), "not_an_object");
    assert.equal(rejection("null"), "not_an_object");
    assert.equal(rejection("{not json"), "invalid_json");
  });

  it("refuses a title over 200 characters but accepts exactly 200 (counted in characters)", () => {
    const url = "https://videos.example.com/v.mp4";
    assert.equal(rejection(JSON.stringify({ url, title: "é".repeat(200) })), "accepted");
    assert.equal(rejection(JSON.stringify({ url, title: "é".repeat(201) })), "title_too_long");
  });

  it("refuses a 1 MB title, and any payload over 4 KB, before parsing it", () => {
    const url = "https://videos.example.com/v.mp4";
    assert.equal(rejection(JSON.stringify({ url, title: "a".repeat(1024 * 1024) })), "payload_too_large");
    // 4 KB is counted in UTF-8 bytes: 1500 "é" are 3000 bytes, 2100 are over 4096.
    const padding = "é".repeat(2100);
    assert.ok(new TextEncoder().encode(padding).length > MAX_SHOW_VIDEO_PAYLOAD_BYTES);
    assert.equal(rejection(JSON.stringify({ url, title: "ok", note: padding })), "payload_too_large");
  });
});

describe("kiosk.show_video answer", () => {
  it("shows a valid video and answers shown", () => {
    const shown: KioskVideo[] = [];
    const reply = answerShowVideo(JSON.stringify({ url: "https://v.example/a.mp4", title: "Gainage" }), "agent-1", {
      show: (video) => shown.push(video),
      onRejected: () => assert.fail("must not reject"),
    });
    assert.deepEqual(JSON.parse(reply), { status: "shown" });
    assert.deepEqual(shown, [{ url: "https://v.example/a.mp4", title: "Gainage" }]);
  });

  it("shows nothing, reports the caller and answers rejected with the reason", () => {
    const refused: Array<[ShowVideoRejection, string]> = [];
    const reply = answerShowVideo(JSON.stringify({ url: "javascript:alert(1)" }), "agent-1", {
      show: () => assert.fail("must not show"),
      onRejected: (reason, caller) => refused.push([reason, caller]),
    });
    assert.deepEqual(JSON.parse(reply), { status: "rejected", reason: "unsupported_url_scheme" });
    assert.deepEqual(refused, [["unsupported_url_scheme", "agent-1"]]);
  });
});

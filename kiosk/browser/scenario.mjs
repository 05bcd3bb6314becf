#!/usr/bin/env node
// Plays one kiosk scenario in Debian's Chromium (never a downloaded browser), driven by
// playwright-core, with a fake microphone that plays a WAV file.
//
//   node browser/scenario.mjs '<json config>'
//
// Config: { url, steps: [...], wav?, microphone?: "fake" | "denied", artifactsDir?,
//           sessionOverride?: {status, body} (answers /api/kiosk-session instead of the server),
//           chromium?: path, stepTimeoutMs? }
// Steps (run in order, each waits up to stepTimeoutMs or its own timeoutMs):
//   {click_badge: "LYON-0001"}            {wait_state: ["listening", "speaking"]}
//   {wait_state_seen: "reconnecting"}     (at any time since the page loaded)
//   {wait_agent_audio: 0.01}              {chat: "Montre-moi le squat"}
//   {wait_video: "https://…" or "/videos/…" (resolved against the page)}
//   {wait_video_playing: 1.5}             (the overlay's clip plays: currentTime ≥ 1.5 s, no error)
//   {wait_video_closed: true}             {tap_video: true}
//   {wait_fallback: "jarvis_disabled"}    (the page moved to the legacy provider, for this reason)
//   {wait_legacy_audio: 0.5}              (seconds of the legacy provider's answer queued for playback)
//   {wait_message: "microphone_denied"}   {wait_rejections: 3}
//   {wait_transcript: "Bonjour"}          {screenshot: "name.png"}    {sleep: 500}
//   {end: true}                           {measure_turn: {threshold, silenceMs}} (one turn's latency)
//   {mute: true|false}                    (clicks the mute button, waits for it to show the state)
//   {save_diagnostics: "key"}             (keeps a snapshot of the page's diagnostics under key)
//   {offline: true|false}                 (cuts / restores the page's network)
//   {collect_levels: true}                (every mic / agent level sample: [t_ms, rms], for the bench)
// Prints ONE JSON line on stdout: {ok, failed_step?, error?, diagnostics..., page_errors, console_errors}.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2] ?? "{}");
const chromiumPath = config.chromium ?? "/usr/bin/chromium";
const stepTimeoutMs = config.stepTimeoutMs ?? 30_000;

const args = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
  // LiveKit runs on loopback: let WebRTC offer plain host candidates instead of mDNS names.
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--use-fake-device-for-media-stream",
];
if ((config.microphone ?? "fake") === "fake") {
  args.push("--use-fake-ui-for-media-stream");
  if (config.wav) args.push(`--use-file-for-fake-audio-capture=${config.wav}${config.wavLoop ? "" : "%noloop"}`);
} else {
  args.push("--deny-permission-prompts");
}

const pageErrors = [];
const consoleErrors = [];
const consoleLog = [];
const kioskLogs = [];
const result = { ok: false, steps_done: 0 };
const userDataDir = await mkdtemp(join(tmpdir(), "jarvis-kiosk-chromium-"));
let context;

function log(message) {
  process.stderr.write(`[kiosk-browser] ${message}\n`);
}

async function diagnostics(page) {
  return page.evaluate(() => {
    const d = window.jarvisDiagnostics;
    const message = document.getElementById("message");
    const overlay = document.getElementById("video-overlay");
    const player = document.getElementById("video-player");
    return {
      fallbacks: d.fallbacks,
      ducks: d.ducks,
      provider: d.provider(),
      legacy_played_s: d.legacyPlayedSeconds(),
      video_time: player.currentTime,
      video_paused: player.paused,
      video_error_visible: !document.getElementById("video-error").hidden,
      states: d.states,
      errors: d.errors,
      videos: d.videos,
      video_rejections: d.videoRejections,
      message_code: message.hidden ? null : message.dataset.code ?? null,
      message_text: message.hidden ? null : message.textContent,
      overlay_visible: !overlay.hidden,
      overlay_url: overlay.dataset.url ?? null,
      transcript: [...document.querySelectorAll("#transcript li")].map((li) => ({
        speaker: li.dataset.speaker,
        text: li.textContent,
      })),
      state: document.getElementById("app").dataset.state,
      agent_present: d.kiosk()?.agentPresent ?? false,
      muted: document.getElementById("mute-button").getAttribute("aria-pressed") === "true",
      mic_settings: (() => {
        const mic = d.kiosk()?.livekitRoom?.localParticipant.getTrackPublications().find((p) => p.kind === "audio");
        const s = mic?.track?.mediaStreamTrack.getSettings();
        return s ? { echoCancellation: s.echoCancellation, noiseSuppression: s.noiseSuppression, autoGainControl: s.autoGainControl } : null;
      })(),
      greeting: document.getElementById("greeting").textContent,
      now: performance.now(),
    };
  });
}

async function levels(page, which) {
  return page.evaluate((w) => (w === "agent" ? window.jarvisDiagnostics.agentLevels() : window.jarvisDiagnostics.micLevels()), which);
}

async function poll(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Voice-to-voice as the browser feels it: the end of the fake microphone's speech (last
 * captured sample above the speech threshold, followed by silence) to the first received
 * agent sample above the threshold after it.
 */
async function measureTurn(page, step) {
  const threshold = step.threshold ?? 0.02;
  const silenceMs = step.silenceMs ?? 600;
  const timeoutMs = step.timeoutMs ?? stepTimeoutMs;
  const since = step.since === "now" ? (await diagnostics(page)).now : 0;
  const endOfSpeech = await poll("the end of the microphone's speech", timeoutMs, async () => {
    const mic = (await levels(page, "mic")).filter((s) => s.t >= since);
    let lastLoud = null;
    for (const s of mic) if (s.rms > threshold) lastLoud = s.t;
    const last = mic.at(-1);
    return lastLoud !== null && last && last.t - lastLoud >= silenceMs ? lastLoud : null;
  });
  const firstAgent = await poll("the agent's answer audio", timeoutMs, async () => {
    const agent = await levels(page, "agent");
    return agent.find((s) => s.t > endOfSpeech && s.rms > threshold)?.t ?? null;
  });
  return { end_of_speech_ms: endOfSpeech, first_agent_audio_ms: firstAgent, v2v_ms: firstAgent - endOfSpeech };
}

async function runStep(page, step) {
  const timeoutMs = step.timeoutMs ?? stepTimeoutMs;
  if (step.click_badge) {
    await page.click(`button[data-badge="${step.click_badge}"]`, { timeout: timeoutMs });
  } else if (step.wait_state) {
    await poll(`state ${step.wait_state.join("|")}`, timeoutMs, async () =>
      step.wait_state.includes((await diagnostics(page)).state),
    );
  } else if (step.wait_state_seen) {
    // From the history, so a state shorter than the polling period is not missed.
    await poll(`state ${step.wait_state_seen} seen`, timeoutMs, async () =>
      (await diagnostics(page)).states.some((s) => s.state === step.wait_state_seen),
    );
  } else if (step.wait_agent_present) {
    await poll("the agent to join the room", timeoutMs, async () => (await diagnostics(page)).agent_present);
  } else if (step.wait_agent_audio !== undefined) {
    const peak = await poll("energy in the agent's received audio", timeoutMs, async () => {
      const max = Math.max(0, ...(await levels(page, "agent")).map((s) => s.rms));
      return max > step.wait_agent_audio ? max : null;
    });
    result.agent_audio_peak_rms = peak;
  } else if (step.chat) {
    await page.fill("#chat-input", step.chat, { timeout: timeoutMs });
    await page.press("#chat-input", "Enter");
  } else if (step.mute !== undefined) {
    await page.click("#mute-button", { timeout: timeoutMs });
    await poll(`mute ${step.mute}`, timeoutMs, async () => (await diagnostics(page)).muted === Boolean(step.mute));
  } else if (step.save_diagnostics) {
    result[step.save_diagnostics] = await diagnostics(page);
  } else if (step.wait_video) {
    const expected = new URL(step.wait_video, page.url()).href;
    await poll(`the video overlay with ${expected}`, timeoutMs, async () => {
      const d = await diagnostics(page);
      return d.overlay_visible && d.overlay_url === expected;
    });
  } else if (step.wait_video_playing !== undefined) {
    const times = [];
    await poll(`the clip to play ${step.wait_video_playing} s`, timeoutMs, async () => {
      const d = await diagnostics(page);
      if (d.video_error_visible) throw new Error("the page says the video cannot be played");
      times.push(Math.round(d.video_time * 1000) / 1000);
      return d.overlay_visible && d.video_time >= step.wait_video_playing;
    });
    result.video_times = times;
  } else if (step.wait_fallback) {
    await poll(`the fallback (${step.wait_fallback})`, timeoutMs, async () =>
      (await diagnostics(page)).fallbacks.some((f) => f.reason === step.wait_fallback),
    );
  } else if (step.wait_legacy_audio !== undefined) {
    await poll(`${step.wait_legacy_audio} s of the legacy provider's audio`, timeoutMs, async () =>
      (await diagnostics(page)).legacy_played_s >= step.wait_legacy_audio,
    );
  } else if (step.wait_video_closed) {
    await poll("the video overlay to close", timeoutMs, async () => !(await diagnostics(page)).overlay_visible);
  } else if (step.tap_video) {
    await page.click("#video-overlay", { timeout: timeoutMs });
  } else if (step.wait_message) {
    await poll(`message ${step.wait_message}`, timeoutMs, async () =>
      (await diagnostics(page)).message_code === step.wait_message,
    );
  } else if (step.wait_rejections !== undefined) {
    await poll(`${step.wait_rejections} refused videos`, timeoutMs, async () =>
      (await diagnostics(page)).video_rejections.length >= step.wait_rejections,
    );
  } else if (step.wait_transcript) {
    await poll(`"${step.wait_transcript}" in the transcript`, timeoutMs, async () =>
      (await diagnostics(page)).transcript.some((line) => line.text.includes(step.wait_transcript)),
    );
  } else if (step.screenshot) {
    const path = join(config.artifactsDir ?? ".", step.screenshot);
    await page.screenshot({ path });
    (result.screenshots ??= []).push(path);
  } else if (step.sleep) {
    await new Promise((r) => setTimeout(r, step.sleep));
  } else if (step.end) {
    await page.click("#end-button", { timeout: timeoutMs });
    await poll("the session to end", timeoutMs, async () => (await diagnostics(page)).state === "ended");
  } else if (step.offline !== undefined) {
    await context.setOffline(Boolean(step.offline));
  } else if (step.collect_levels) {
    const round = (samples) => samples.map((s) => [Math.round(s.t * 10) / 10, Math.round(s.rms * 10000) / 10000]);
    result.levels = { mic: round(await levels(page, "mic")), agent: round(await levels(page, "agent")) };
  } else if (step.measure_turn) {
    (result.turns ??= []).push(await measureTurn(page, step.measure_turn));
  } else {
    throw new Error(`unknown step ${JSON.stringify(step)}`);
  }
}

let page;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    args,
    // Playwright mutes audio by default; a kiosk plays it (Chromium has no sound card here anyway).
    ignoreDefaultArgs: ["--mute-audio"],
    viewport: { width: 1920, height: 1080 }, // a 1080p kiosk screen
    locale: "fr-FR",
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (error) => pageErrors.push(`${error.name}: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text().slice(0, 300));
    if (message.text().includes("[jarvis-kiosk]")) kioskLogs.push(`${message.type()}: ${message.text().slice(0, 300)}`);
    if (config.echoConsole) consoleLog.push(`${message.type()}: ${message.text().slice(0, 300)}`);
  });
  if (config.sessionOverride) {
    await page.route("**/api/kiosk-session", (route) =>
      route.fulfill({
        status: config.sessionOverride.status ?? 201,
        contentType: "application/json",
        body: JSON.stringify(config.sessionOverride.body),
      }),
    );
  }
  await page.goto(config.url, { waitUntil: "load" });
  for (const step of config.steps ?? []) {
    result.current_step = step;
    await runStep(page, step);
    result.steps_done += 1;
  }
  delete result.current_step;
  result.ok = true;
} catch (error) {
  result.error = error instanceof Error ? error.message : String(error);
  log(`failed: ${result.error}`);
  if (page && config.artifactsDir) {
    const path = join(config.artifactsDir, `failure-${Date.now()}.png`);
    await page.screenshot({ path }).catch(() => {});
    result.failure_screenshot = path;
  }
} finally {
  if (page) {
    try {
      Object.assign(result, await diagnostics(page));
    } catch (error) {
      result.diagnostics_error = String(error);
    }
  }
  result.page_errors = pageErrors;
  result.console_errors = consoleErrors;
  result.kiosk_logs = kioskLogs;
  if (config.echoConsole) result.console = consoleLog;
  await context?.close().catch(() => {});
  await rm(userDataDir, { recursive: true, force: true });
}
// Exit only once the line is flushed: a pipe takes 64 KB at a time, and the level samples
// the bench collects are larger than that.
process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1));

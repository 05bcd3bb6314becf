/**
 * The kiosk page: badge → session → conversation, full screen and in French.
 * In demo mode the badge list comes from the demo "gym backend" (server/demo-server.mjs),
 * which holds the gym key and asks the token service for the session, exactly as the
 * gym's Next.js backend does in production.
 */
import { JarvisKiosk, type KioskSessionCredentials } from "../src/kiosk.js";
import { fallbackReasonOf, type FallbackReason } from "../src/legacy.js";
import { OpenAIRealtimeProvider, type RealtimeClientSecret } from "../src/openai-realtime.js";
import { FRENCH_STATE_LABELS, kioskError, type KioskError, type KioskErrorCode } from "../src/messages.js";
import type { KioskVideo } from "../src/rpc.js";
import type { TranscriptLine } from "../src/transcript.js";
import { LevelMeter } from "./meter.js";

interface DemoBadge {
  badge_id: string;
  label: string;
}

interface SessionRouteError {
  code: string;
  detail?: string;
}

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`page is missing #${id}`);
  return found as T;
}

const app = element<HTMLElement>("app");
const badgeScreen = element<HTMLElement>("badge-screen");
const sessionScreen = element<HTMLElement>("session-screen");
const badgeList = element<HTMLUListElement>("demo-badges");
const badgeForm = element<HTMLFormElement>("badge-form");
const badgeInput = element<HTMLInputElement>("badge-input");
const greeting = element<HTMLElement>("greeting");
const stateLabel = element<HTMLElement>("state-label");
const transcriptList = element<HTMLOListElement>("transcript");
const chatForm = element<HTMLFormElement>("chat-form");
const chatInput = element<HTMLInputElement>("chat-input");
const muteButton = element<HTMLButtonElement>("mute-button");
const endButton = element<HTMLButtonElement>("end-button");
const messageBox = element<HTMLElement>("message");
const overlay = element<HTMLElement>("video-overlay");
const videoTitle = element<HTMLElement>("video-title");
const videoPlayer = element<HTMLVideoElement>("video-player");
const videoError = element<HTMLElement>("video-error");

const params = new URLSearchParams(window.location.search);
const agentTimeoutMs = Number(params.get("agentTimeoutMs") ?? "20000");
// How long the kiosk keeps trying after a network drop before telling the member:
// "?reconnectDelaysMs=300,600,1200" (livekit-client's resume attempts, then as many rejoins).
const reconnectDelaysMs = params.get("reconnectDelaysMs")?.split(",").map(Number).filter((n) => n >= 0);

let kiosk: JarvisKiosk | null = null;
let legacy: OpenAIRealtimeProvider | null = null;
let audioContext: AudioContext | null = null;
const agentMeter = { meter: null as LevelMeter | null };
const micMeter = { meter: null as LevelMeter | null };

/** What the browser tests and the bench read; nothing personal is in it. */
const diagnostics = {
  states: [] as Array<{ t: number; state: string }>,
  errors: [] as Array<{ t: number; code: KioskErrorCode }>,
  videos: [] as Array<{ t: number; url: string; title: string }>,
  videoRejections: [] as string[],
  fallbacks: [] as Array<{ t: number; reason: FallbackReason }>,
  ducks: [] as Array<{ t: number; ducked: boolean }>,
  provider: () => kiosk?.provider ?? null,
  legacyPlayedSeconds: () => legacy?.playedSeconds ?? 0,
  agentLevels: () => agentMeter.meter?.samples ?? [],
  micLevels: () => micMeter.meter?.samples ?? [],
  kiosk: () => kiosk,
};
(window as unknown as { jarvisDiagnostics: typeof diagnostics }).jarvisDiagnostics = diagnostics;

function showMessage(error: KioskError | null): void {
  if (error === null) {
    messageBox.hidden = true;
    messageBox.textContent = "";
    delete messageBox.dataset["code"];
    return;
  }
  messageBox.hidden = false;
  messageBox.textContent = error.message;
  messageBox.dataset["code"] = error.code;
}

function showScreen(screen: "badge" | "session"): void {
  badgeScreen.hidden = screen !== "badge";
  sessionScreen.hidden = screen !== "session";
}

function renderTranscript(lines: TranscriptLine[]): void {
  transcriptList.replaceChildren(
    ...lines.map((line) => {
      const item = document.createElement("li");
      item.className = `${line.speaker}${line.final ? "" : " interim"}`;
      item.dataset["speaker"] = line.speaker;
      item.textContent = line.text;
      return item;
    }),
  );
  transcriptList.scrollTop = transcriptList.scrollHeight;
}

function showVideo(video: KioskVideo | null): void {
  if (video === null) {
    overlay.hidden = true;
    videoPlayer.pause();
    videoPlayer.removeAttribute("src");
    videoPlayer.load();
    delete overlay.dataset["url"];
    return;
  }
  // The next video replaces the current one.
  videoError.hidden = true;
  diagnostics.videos.push({ t: performance.now(), url: video.url, title: video.title });
  videoTitle.textContent = video.title || "Tutoriel";
  overlay.dataset["url"] = video.url;
  videoPlayer.src = video.url;
  overlay.hidden = false;
  videoPlayer.play().catch(() => {
    // An unreachable video must not break the page: the title stays, the member can close it.
  });
}

function meterFor(holder: { meter: LevelMeter | null }, track: MediaStreamTrack | null): void {
  holder.meter?.detach();
  if (track === null || audioContext === null) return;
  holder.meter ??= new LevelMeter(audioContext);
  holder.meter.attach(track);
}

type SessionAnswer = (KioskSessionCredentials & { member_first_name: string }) | { fallback: FallbackReason };

async function requestSession(badgeId: string): Promise<SessionAnswer> {
  const response = await fetch("/api/kiosk-session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ badge_id: badgeId }),
  });
  const body = (await response.json().catch(() => ({}))) as unknown;
  // JARVIS is off for this kiosk or full: the member talks with the previous provider instead.
  const fallback = fallbackReasonOf(body);
  if (fallback !== null) return { fallback };
  if (!response.ok) {
    const failure = body as Partial<SessionRouteError>;
    throw new SessionRefused(failure.code ?? "unexpected");
  }
  return body as KioskSessionCredentials & { member_first_name: string };
}

class SessionRefused extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

function codeForRouteError(code: string): KioskErrorCode {
  switch (code) {
    case "forbidden":
    case "member_not_found":
    case "invalid_request":
      return "session_refused";
    default:
      return "session_unavailable";
  }
}

async function startSession(badgeId: string): Promise<void> {
  if (kiosk !== null) return;
  showMessage(null);
  // Created inside the tap's handler so the browser lets it play sound.
  audioContext ??= new AudioContext();
  void audioContext.resume();
  let answer: SessionAnswer;
  try {
    answer = await requestSession(badgeId);
  } catch (error) {
    const code = error instanceof SessionRefused ? codeForRouteError(error.code) : "session_unavailable";
    diagnostics.errors.push({ t: performance.now(), code });
    showMessage(kioskError(code));
    return;
  }

  // The previous provider, reached through the demo gym backend's /api/legacy-session (which
  // holds its key); without one configured there, falling back fails and the member is told.
  legacy = new OpenAIRealtimeProvider({
    clientSecret: requestLegacySecret,
    onClosed: () => void kiosk?.end(),
  });
  const current = new JarvisKiosk({
    agentTimeoutMs,
    legacy,
    ...(reconnectDelaysMs?.length ? { reconnectDelaysMs, blipRetryDelaysMs: reconnectDelaysMs } : {}),
  });
  kiosk = current;
  const firstName = "fallback" in answer ? "" : answer.member_first_name;
  greeting.textContent = firstName ? `Bonjour ${firstName}` : "Bonjour";
  renderTranscript([]);
  muteButton.setAttribute("aria-pressed", "false");
  muteButton.textContent = "Couper le micro";
  showScreen("session");

  current.on("state", (state) => {
    diagnostics.states.push({ t: performance.now(), state });
    app.dataset["state"] = state;
    stateLabel.textContent = FRENCH_STATE_LABELS[state];
  });
  current.on("transcript", renderTranscript);
  current.on("video", showVideo);
  current.on("videoRejected", ({ reason }) => diagnostics.videoRejections.push(reason));
  current.on("error", (error) => {
    diagnostics.errors.push({ t: performance.now(), code: error.code });
    showMessage(error);
  });
  current.on("muted", (muted) => {
    muteButton.setAttribute("aria-pressed", String(muted));
    muteButton.textContent = muted ? "Réactiver le micro" : "Couper le micro";
  });
  current.on("agentAudio", (track) => meterFor(agentMeter, track));
  current.on("ducked", (ducked) => diagnostics.ducks.push({ t: performance.now(), ducked }));
  current.on("fallback", ({ reason }) => diagnostics.fallbacks.push({ t: performance.now(), reason }));
  current.on("ended", () => {
    meterFor(agentMeter, null);
    meterFor(micMeter, null);
    kiosk = null;
    // Back to the badge screen, keeping any message (network lost, agent absent…) visible.
    showScreen("badge");
  });

  if ("fallback" in answer) {
    await current.fallBack(answer.fallback);
    return;
  }
  await current.connect(answer);
  const micTrack = current.livekitRoom?.localParticipant.getTrackPublications().find((p) => p.kind === "audio")?.track;
  if (micTrack) meterFor(micMeter, micTrack.mediaStreamTrack);
}

async function requestLegacySecret(): Promise<RealtimeClientSecret> {
  const response = await fetch("/api/legacy-session", { method: "POST" });
  if (!response.ok) throw new Error(`the legacy session route answered ${response.status}`);
  return (await response.json()) as RealtimeClientSecret;
}

async function loadDemoBadges(): Promise<void> {
  try {
    const response = await fetch("/api/demo-badges");
    const badges = (await response.json()) as DemoBadge[];
    badgeList.replaceChildren(
      ...badges.map((badge) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset["badge"] = badge.badge_id;
        button.textContent = badge.label;
        const id = document.createElement("small");
        id.textContent = badge.badge_id;
        button.append(id);
        button.addEventListener("click", () => void startSession(badge.badge_id));
        item.append(button);
        return item;
      }),
    );
  } catch {
    // Without the list, the badge field still works.
  }
}

badgeForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const badgeId = badgeInput.value.trim();
  if (badgeId !== "") void startSession(badgeId);
});
chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = chatInput.value;
  chatInput.value = "";
  void kiosk?.sendChat(text);
});
muteButton.addEventListener("click", () => void kiosk?.setMuted(!kiosk.muted));
endButton.addEventListener("click", () => void kiosk?.end());
overlay.addEventListener("click", () => kiosk?.closeVideo() ?? showVideo(null));
videoPlayer.addEventListener("ended", () => kiosk?.closeVideo() ?? showVideo(null));
// An unreachable video says so instead of leaving a black frame; the member closes it with a tap.
videoPlayer.addEventListener("error", () => {
  if (!overlay.hidden && videoPlayer.getAttribute("src")) videoError.hidden = false;
});

showScreen("badge");
void loadDemoBadges();

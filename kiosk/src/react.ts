/**
 * useJarvisKiosk: the kiosk session as React state, for the gym's Next.js app.
 * Give it what your server route returned (or null before a badge is scanned): credentials,
 * which it joins, follows and leaves with the component; or `{ fallback: reason }` when the
 * route said `jarvis_disabled` / `over_capacity`, which starts `options.legacy` instead.
 */
import { useCallback, useEffect, useRef, useState } from "react";

import { JarvisKiosk, type JarvisKioskOptions, type KioskSessionCredentials } from "./kiosk.js";
import type { FallbackReason } from "./legacy.js";
import type { KioskError } from "./messages.js";
import type { KioskVideo } from "./rpc.js";
import type { KioskState } from "./state.js";
import type { TranscriptLine } from "./transcript.js";

/** What the hook starts: a JARVIS session, or the previous provider for this reason. */
export type KioskSessionAnswer = KioskSessionCredentials | { fallback: FallbackReason };

export interface UseJarvisKiosk {
  state: KioskState;
  /** Who carries the conversation (the legacy provider after a fallback). */
  provider: "jarvis" | "legacy" | null;
  transcript: TranscriptLine[];
  video: KioskVideo | null;
  error: KioskError | null;
  muted: boolean;
  setMuted: (muted: boolean) => Promise<void>;
  sendChat: (text: string) => Promise<void>;
  closeVideo: () => void;
  end: () => Promise<void>;
}

export function useJarvisKiosk(
  session: KioskSessionAnswer | null,
  options: JarvisKioskOptions = {},
): UseJarvisKiosk {
  const [state, setState] = useState<KioskState>("idle");
  const [transcript, setTranscript] = useState<TranscriptLine[]>([]);
  const [video, setVideo] = useState<KioskVideo | null>(null);
  const [error, setError] = useState<KioskError | null>(null);
  const [muted, setMutedState] = useState(false);
  const [provider, setProvider] = useState<"jarvis" | "legacy" | null>(null);
  const kioskRef = useRef<JarvisKiosk | null>(null);
  // Options are read once per session: a new object each render must not rejoin the room.
  const optionsRef = useRef(options);
  optionsRef.current = options;

  useEffect(() => {
    if (session === null) return;
    const kiosk = new JarvisKiosk(optionsRef.current);
    kioskRef.current = kiosk;
    setError(null);
    setTranscript([]);
    setVideo(null);
    kiosk.on("state", setState);
    kiosk.on("transcript", setTranscript);
    kiosk.on("video", setVideo);
    kiosk.on("error", setError);
    kiosk.on("muted", setMutedState);
    kiosk.on("state", () => setProvider(kiosk.provider));
    if ("fallback" in session) void kiosk.fallBack(session.fallback);
    else void kiosk.connect(session);
    return () => {
      kioskRef.current = null;
      void kiosk.end().finally(() => kiosk.removeAllListeners());
    };
  }, [session]);

  const setMuted = useCallback(async (value: boolean) => kioskRef.current?.setMuted(value), []);
  const sendChat = useCallback(async (text: string) => kioskRef.current?.sendChat(text), []);
  const closeVideo = useCallback(() => kioskRef.current?.closeVideo(), []);
  const end = useCallback(async () => kioskRef.current?.end(), []);

  return { state, provider, transcript, video, error, muted, setMuted, sendChat, closeVideo, end };
}

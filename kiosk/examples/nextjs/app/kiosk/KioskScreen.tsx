"use client";
/**
 * app/kiosk/KioskScreen.tsx — a minimal kiosk screen in the gym's Next.js app, with the
 * useJarvisKiosk hook. The badge reader gives a badge id; the route gives the session, or says
 * to use the previous provider (flag off, JARVIS full), which the hook then starts; it also
 * starts it when no agent joined within 8 s.
 */
import { useMemo, useState } from "react";

import {
  fallbackReasonOf,
  FRENCH_STATE_LABELS,
  OpenAIRealtimeProvider,
  type RealtimeClientSecret,
} from "@jarvis/kiosk";
import { useJarvisKiosk, type KioskSessionAnswer } from "@jarvis/kiosk/react";

async function legacySecret(): Promise<RealtimeClientSecret> {
  const response = await fetch("/api/legacy-session", { method: "POST" });
  if (!response.ok) throw new Error(`legacy session route: ${response.status}`);
  return (await response.json()) as RealtimeClientSecret;
}

export function KioskScreen({ badgeId }: { badgeId: string | null }) {
  const [session, setSession] = useState<KioskSessionAnswer | null>(null);
  const [firstName, setFirstName] = useState("");
  const legacy = useMemo(() => new OpenAIRealtimeProvider({ clientSecret: legacySecret }), []);
  const kiosk = useJarvisKiosk(session, { agentTimeoutMs: 8_000, legacy });

  async function start(): Promise<void> {
    if (badgeId === null) return;
    const response = await fetch("/api/kiosk-session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ badge_id: badgeId }),
    });
    const body: unknown = await response.json().catch(() => null);
    const fallback = fallbackReasonOf(body);
    if (fallback !== null) {
      setSession({ fallback });
    } else if (response.ok) {
      const credentials = body as { livekit_url: string; token: string; member_first_name: string };
      setFirstName(credentials.member_first_name);
      setSession(credentials);
    }
  }

  return (
    <main>
      {session === null ? (
        <button onClick={() => void start()}>Commencer</button>
      ) : (
        <>
          <h1>{firstName ? `Bonjour ${firstName}` : "Bonjour"}</h1>
          <p>{FRENCH_STATE_LABELS[kiosk.state]}</p>
          {kiosk.error && <p role="alert">{kiosk.error.message}</p>}
          <ol>
            {kiosk.transcript.map((line) => (
              <li key={line.id} className={line.speaker}>
                {line.text}
              </li>
            ))}
          </ol>
          {kiosk.video && (
            <div onClick={kiosk.closeVideo}>
              <h2>{kiosk.video.title}</h2>
              <video src={kiosk.video.url} autoPlay onEnded={kiosk.closeVideo} />
            </div>
          )}
          {kiosk.provider === "jarvis" && (
            <button onClick={() => void kiosk.setMuted(!kiosk.muted)}>
              {kiosk.muted ? "Réactiver le micro" : "Couper le micro"}
            </button>
          )}
          <button onClick={() => void kiosk.end().then(() => setSession(null))}>Terminer</button>
        </>
      )}
    </main>
  );
}

"use client";
/**
 * app/kiosk/KioskScreen.tsx — a minimal kiosk screen in the gym's Next.js app, with the
 * useJarvisKiosk hook. The badge reader gives a badge id; the route above gives the session.
 */
import { useState } from "react";

import { FRENCH_STATE_LABELS, type KioskSessionCredentials } from "@jarvis/kiosk";
import { useJarvisKiosk } from "@jarvis/kiosk/react";

export function KioskScreen({ badgeId }: { badgeId: string | null }) {
  const [session, setSession] = useState<(KioskSessionCredentials & { member_first_name: string }) | null>(null);
  const kiosk = useJarvisKiosk(session, { agentTimeoutMs: 20_000 });

  async function start(): Promise<void> {
    if (badgeId === null) return;
    const response = await fetch("/api/kiosk-session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ badge_id: badgeId }),
    });
    if (response.ok) setSession(await response.json());
  }

  return (
    <main>
      {session === null ? (
        <button onClick={() => void start()}>Commencer</button>
      ) : (
        <>
          <h1>Bonjour {session.member_first_name}</h1>
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
          <button onClick={() => void kiosk.setMuted(!kiosk.muted)}>
            {kiosk.muted ? "Réactiver le micro" : "Couper le micro"}
          </button>
          <button onClick={() => void kiosk.end().then(() => setSession(null))}>Terminer</button>
        </>
      )}
    </main>
  );
}

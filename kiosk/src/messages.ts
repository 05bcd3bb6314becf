/** What can go wrong in a kiosk session, and what the member reads then (in French). */

export type KioskErrorCode =
  | "microphone_denied"
  | "microphone_missing"
  | "token_expired"
  | "network_lost"
  | "agent_absent"
  | "connection_failed"
  | "session_refused"
  | "session_unavailable";

export interface KioskError {
  code: KioskErrorCode;
  /** The French sentence to show the member. */
  message: string;
  /** Technical detail for logs; never personal data. */
  detail?: string;
}

export const FRENCH_MESSAGES: Readonly<Record<KioskErrorCode, string>> = {
  microphone_denied:
    "Le micro est bloqué. Autorisez l’accès au micro dans le navigateur pour parler à JARVIS.",
  microphone_missing: "Aucun micro n’est branché sur cette borne. Prévenez l’accueil.",
  token_expired: "Votre session a expiré. Scannez à nouveau votre badge.",
  network_lost: "La connexion a été coupée. Vérifiez le réseau, puis scannez à nouveau votre badge.",
  agent_absent: "JARVIS ne répond pas pour le moment. Réessayez dans quelques instants ou adressez-vous à l’accueil.",
  connection_failed: "Impossible de joindre JARVIS. Réessayez dans quelques instants.",
  session_refused: "Ce badge n’est pas reconnu dans cette salle. Adressez-vous à l’accueil.",
  session_unavailable: "Le service est momentanément indisponible. Réessayez dans quelques instants.",
};

export function kioskError(code: KioskErrorCode, detail?: string): KioskError {
  return detail === undefined ? { code, message: FRENCH_MESSAGES[code] } : { code, message: FRENCH_MESSAGES[code], detail };
}

/** French label of each state, as the page shows it in large type. */
export const FRENCH_STATE_LABELS = {
  idle: "Scannez votre badge",
  connecting: "Connexion…",
  waiting_agent: "JARVIS arrive…",
  listening: "Je vous écoute",
  thinking: "Je réfléchis…",
  speaking: "JARVIS parle",
  reconnecting: "Reconnexion…",
  legacy: "Je vous écoute",
  ended: "Session terminée",
} as const;

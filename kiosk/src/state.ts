/**
 * The kiosk's state, derived from two facts only: where the LiveKit connection is,
 * and what the agent says it is doing in its `lk.agent.state` attribute.
 * Deriving (rather than mutating on each event) keeps the order of LiveKit's events
 * from ever leaving the screen in an impossible state.
 */

/** What the member sees: one of these at any time. */
export type KioskState =
  | "idle"
  | "connecting"
  | "waiting_agent"
  | "listening"
  | "thinking"
  | "speaking"
  | "reconnecting"
  /** The member talks with the chain's previous voice provider (JARVIS is off, full, or absent). */
  | "legacy"
  | "ended";

export const KIOSK_STATES: readonly KioskState[] = [
  "idle",
  "connecting",
  "waiting_agent",
  "listening",
  "thinking",
  "speaking",
  "reconnecting",
  "legacy",
  "ended",
];

export type ConnectionPhase = "disconnected" | "connecting" | "connected" | "reconnecting";

/** The attribute LiveKit Agents sets on the agent participant. */
export const AGENT_STATE_ATTRIBUTE = "lk.agent.state";

export interface StateInputs {
  connection: ConnectionPhase;
  /** True once the session was started (so "disconnected" then means the session is over). */
  started: boolean;
  /** True after `end()` or a final disconnection. */
  ended: boolean;
  agentPresent: boolean;
  /** Raw value of `lk.agent.state` (initializing, idle, listening, thinking, speaking), if any. */
  agentState: string | undefined;
  /** True while the legacy provider carries the conversation (no LiveKit room then). */
  legacy: boolean;
}

export const INITIAL_INPUTS: StateInputs = {
  connection: "disconnected",
  started: false,
  ended: false,
  agentPresent: false,
  agentState: undefined,
  legacy: false,
};

export function deriveKioskState(inputs: StateInputs): KioskState {
  if (inputs.ended) return "ended";
  if (inputs.legacy) return "legacy";
  switch (inputs.connection) {
    case "disconnected":
      return inputs.started ? "ended" : "idle";
    case "connecting":
      return "connecting";
    case "reconnecting":
      return "reconnecting";
    case "connected":
      break;
  }
  if (!inputs.agentPresent) return "waiting_agent";
  switch (inputs.agentState) {
    case "thinking":
      return "thinking";
    case "speaking":
      return "speaking";
    case "listening":
    case "idle":
      return "listening";
    default:
      // "initializing" or no attribute yet: the agent joined but is not ready to hear.
      return "waiting_agent";
  }
}

/** Holds the inputs and reports the derived state only when it actually changes. */
export class KioskStateMachine {
  private inputs: StateInputs = { ...INITIAL_INPUTS };
  private current: KioskState = "idle";

  constructor(private readonly onChange: (state: KioskState, previous: KioskState) => void) {}

  get state(): KioskState {
    return this.current;
  }

  get snapshot(): Readonly<StateInputs> {
    return this.inputs;
  }

  update(patch: Partial<StateInputs>): KioskState {
    this.inputs = { ...this.inputs, ...patch };
    // A session that ended stays ended: late LiveKit events must not revive the screen.
    if (this.current === "ended" && this.inputs.started) this.inputs.ended = true;
    const next = deriveKioskState(this.inputs);
    if (next !== this.current) {
      const previous = this.current;
      this.current = next;
      this.onChange(next, previous);
    }
    return this.current;
  }

  reset(): void {
    this.inputs = { ...INITIAL_INPUTS };
    const previous = this.current;
    this.current = "idle";
    if (previous !== "idle") this.onChange("idle", previous);
  }
}

/**
 * What the kiosk does when the room is lost for good.
 *
 * livekit-client already survives short blips by itself (ICE restart, signal resume:
 * its Reconnecting / Reconnected events). When it gives up and reports Disconnected for
 * a network reason, the kiosk rejoins the same room with the same token a few times,
 * with a growing delay, and then tells the member the network dropped. Reasons that say
 * the server or the member meant it (session ended, removed, room deleted) and a token
 * the server no longer accepts never trigger a retry.
 */

export interface ReconnectPolicyOptions {
  /** Delays before each attempt, in ms; the number of entries is the number of attempts. */
  delaysMs: readonly number[];
}

export const DEFAULT_RECONNECT_DELAYS_MS: readonly number[] = [500, 1000, 2000, 4000];

/** Why the room was lost, reduced to what decides a retry. */
export type DisconnectCause = "network" | "by_member" | "by_server" | "duplicate_identity";

export type ReconnectOutcome = "reconnected" | "gave_up" | "token_refused" | "cancelled";

/** The error a connect attempt throws, reduced to what the policy needs. */
export interface AttemptFailure {
  /** True when the server refused the token (401/403): retrying cannot help. */
  tokenRefused: boolean;
}

export class Reconnector {
  private cancelled = false;
  private running = false;

  constructor(
    private readonly options: ReconnectPolicyOptions = { delaysMs: DEFAULT_RECONNECT_DELAYS_MS },
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {}

  static shouldRetry(cause: DisconnectCause): boolean {
    return cause === "network";
  }

  get isRunning(): boolean {
    return this.running;
  }

  cancel(): void {
    this.cancelled = true;
  }

  /**
   * Runs attempts until one succeeds, the token is refused, the attempts run out, or
   * `cancel()` is called. `onAttempt` is told the attempt number (1-based) before each.
   */
  async run(
    attempt: () => Promise<void>,
    classify: (error: unknown) => AttemptFailure,
    onAttempt: (n: number) => void = () => {},
  ): Promise<ReconnectOutcome> {
    if (this.running) throw new Error("a reconnection is already running");
    this.running = true;
    this.cancelled = false;
    try {
      for (const [index, delay] of this.options.delaysMs.entries()) {
        await this.sleep(delay);
        if (this.cancelled) return "cancelled";
        onAttempt(index + 1);
        try {
          await attempt();
          if (this.cancelled) return "cancelled";
          return "reconnected";
        } catch (error) {
          if (this.cancelled) return "cancelled";
          if (classify(error).tokenRefused) return "token_refused";
        }
      }
      return "gave_up";
    } finally {
      this.running = false;
    }
  }
}

/**
 * Maps LiveKit's DisconnectReason (protocol enum values, kept numeric so this module has
 * no dependency on the SDK) to what decides a retry.
 */
export function classifyDisconnect(reason: number | undefined): DisconnectCause {
  switch (reason) {
    case 1: // CLIENT_INITIATED
      return "by_member";
    case 2: // DUPLICATE_IDENTITY: the same badge session opened elsewhere
      return "duplicate_identity";
    case 4: // PARTICIPANT_REMOVED
    case 5: // ROOM_DELETED
    case 10: // ROOM_CLOSED
    case 11: // USER_UNAVAILABLE
    case 12: // USER_REJECTED
      return "by_server";
    default:
      // UNKNOWN, SERVER_SHUTDOWN, STATE_MISMATCH, JOIN_FAILURE, MIGRATION, SIGNAL_CLOSE,
      // CONNECTION_TIMEOUT, MEDIA_FAILURE, or no reason at all: the network or a node failed.
      return "network";
  }
}

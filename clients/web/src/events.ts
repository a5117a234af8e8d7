/**
 * The events an exam page may show a candidate, each with its plain-language sentence. They
 * mirror the Rust client's `Event` (crates/client/src/autosaver.rs) kind for kind and in its
 * wording, plus `local-network-blocked`, which only a browser has.
 */

import { refusalOf } from "./http.js";

/** An event: `kind` for code, `message` for the candidate, and the kind's own fields. */
export type HallEvent = { kind: string; message: string; [field: string]: unknown };

/** `HH:MM:SS UTC`. */
function clock(at: Date): string {
  return `${at.toISOString().slice(11, 19)} UTC`;
}

export const events = {
  saved(seq: number, landed: "cloud" | "box" | "laptop", at: Date, box?: { name: string; url: string }, boxes?: number): HallEvent {
    const time = clock(at);
    const message =
      landed === "cloud"
        ? `save ${seq} saved to the cloud at ${time}`
        : landed === "box"
          ? `save ${seq} saved to the hall relay ${box?.name ?? "?"} at ${time}${(boxes ?? 1) >= 2 ? `, held by ${boxes} hall relays` : ""}`
          : seq === 0
            ? `a save kept only on this computer at ${time}: it is numbered and sent once the cloud or a hall relay says where your saves stand`
            : `save ${seq} saved only on this computer at ${time}`;
    return { kind: "saved", message, seq, landed, at: at.toISOString(), ...(box ? { box: box.name, url: box.url } : {}), ...(boxes ? { boxes } : {}) };
  },
  alsoSaving(name: string, url: string): HallEvent {
    return { kind: "also-saving", message: `also saving to the hall relay ${name} at ${url}: two hall relays hold each save`, name, url };
  },
  secondCopy(seq: number, name: string): HallEvent {
    return { kind: "second-copy", message: `save ${seq} is now also held by the hall relay ${name}: two hall relays hold it`, seq, name };
  },
  cloudUnreachable(error: string): HallEvent {
    return { kind: "cloud-unreachable", message: `the cloud does not answer (${error})`, error };
  },
  relaysLearnt(venue: string, count: number): HallEvent {
    return {
      kind: "relays-learnt",
      message: `the cloud lists ${count} hall relays for venue ${venue}: saves can go to them if the cloud stops answering`,
      venue,
      count,
    };
  },
  encrypting(restore: boolean): HallEvent {
    return {
      kind: "encrypting",
      message: restore
        ? "saves are encrypted on this computer for the exam's platform and for the restore code on your exam card: a hall relay stores them but cannot read them"
        : "saves are encrypted on this computer for the exam's platform: a hall relay stores them but cannot read them",
      restore,
    };
  },
  awaitingKeys(error: string): HallEvent {
    return {
      kind: "awaiting-keys",
      message: `the exam's encryption keys are not on this computer yet (${error}): saves are kept only on this computer, and encrypted and sent once the cloud answers`,
      error,
    };
  },
  failedOver(name: string, url: string): HallEvent {
    return {
      kind: "failed-over",
      message:
        name === url
          ? `saving to the hall relay at ${url}: this exam browser trusts its certificate`
          : `saving to the hall relay ${name} at ${url}: this exam browser trusts its certificate`,
      name,
      url,
    };
  },
  boxRefused(url: string, reason: string): HallEvent {
    return { kind: "box-refused", message: `not using ${url}: ${reason}`, url, reason };
  },
  noTrustedBox(): HallEvent {
    return { kind: "no-trusted-box", message: "no trusted hall relay found: saves stay only on this computer for now" };
  },
  boxLost(name: string, error: string): HallEvent {
    return { kind: "box-lost", message: `the hall relay ${name} stopped answering (${error})`, name, error };
  },
  backToCloud(resent: number): HallEvent {
    return {
      kind: "back-to-cloud",
      message: `the cloud answers again: saving there, and re-sent ${resent} saves it lacked`,
      resent,
    };
  },
  /**
   * A save refused for good. `code` is the answer's `error` code; for a 409, `refusal` tells
   * a conflict (`conflict`), a save after the final (`after_final`) and a candidate who
   * continued on another device (`continued_elsewhere`) apart.
   */
  rejected(seq: number, by: string, status: number, reason: string, code?: string): HallEvent {
    return {
      kind: "rejected",
      message: `save ${seq} was refused by ${by} (${status}: ${reason}); it stays on this computer`,
      seq,
      by,
      status,
      reason,
      ...(code ? { code } : {}),
      ...(status === 409 ? { refusal: refusalOf(code) } : {}),
    };
  },
  /** A fresh journal learnt where the candidate's saves stand: `payload` is the newest save's answers (null, with `unopened`, if they could not be opened). */
  restored(from: string, seq: number, final: boolean, payload: Uint8Array | null, unopened: string | null): HallEvent {
    const what = final ? "your final submission" : "your newest save";
    const message = payload
      ? `restored ${what} (save ${seq}, ${payload.length} bytes) from ${from}; your next save continues as save ${seq + 1}`
      : `${from} holds ${what} (save ${seq}) but it could not be opened (${unopened ?? "no reason given"}); your next save continues as save ${seq + 1}`;
    return { kind: "restored", message, from, seq, final, payload, unopened };
  },
  nothingToRestore(from: string): HallEvent {
    return { kind: "nothing-to-restore", message: `${from} holds no save of yours yet: nothing to restore, saves start at 1`, from };
  },
  waitingToContinue(): HallEvent {
    return {
      kind: "waiting-to-continue",
      message: "neither the cloud nor a hall relay answers yet: saves are kept on this computer and numbered once one says where your saves stand",
    };
  },
  examConfigLearnt(from: string, venue: string, relays: number): HallEvent {
    return {
      kind: "exam-config-learnt",
      message: `the hall relay ${from} gave this computer the exam's configuration, signed by the platform: saves are encrypted for the exam and can go to ${relays} hall relays of venue ${venue}`,
      from,
      venue,
      relays,
    };
  },
  continuedElsewhere(by: string, seq: number): HallEvent {
    return {
      kind: "continued-elsewhere",
      message: `your exam continues on another laptop (${by} says you carried on there): this computer has stopped saving`,
      by,
      seq,
    };
  },
  localNetworkBlocked(name: string, url: string, permission: string): HallEvent {
    return {
      kind: "local-network-blocked",
      message:
        `the hall relay ${name === url ? `at ${url}` : `${name} at ${url}`} is unreachable: this browser does not let the exam page ` +
        `reach the hall network (Local Network Access is ${permission}). Saves stay on this computer for now. ` +
        `IT must pre-grant Local Network Access to the exam's site in the exam browser's configuration`,
      name,
      url,
      permission,
    };
  },
};

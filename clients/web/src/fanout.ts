/**
 * Two boxes in one hall: the rules by which the Autosaver writes each save to two boxes while
 * the cloud is gone (the Rust client's crates/client/src/autosaver/fanout.rs).
 *
 * When the boxes the client knows (configured, and the cloud's relay list) are two or more and
 * `hallCopies` (the client's option, else the relay list's `hall_copies`, else 2) is not 1,
 * each save goes to two boxes at once. It counts as held in the hall at the first box's
 * acknowledgement; it stays in the journal until the cloud has it; the second acknowledgement
 * only changes what the candidate is told. A save one box alone holds goes to another as soon
 * as one answers. Each PUT to a box names, in `Hallrelay-Also-Held`, the other box that holds
 * the candidate's newest save: the boxes never talk to each other, and this is how each
 * console counts the candidates it does not hold alone. Every save crosses the hall network
 * twice.
 */

import type { RelayConfig, RelayList } from "./relays.js";

/** Which box answered: its pin and appliance id, as its `/v1/health` names them. */
export interface BoxIdentity {
  pin?: string;
  appliance?: string;
}

/** Reads a box's health answer (JSON) for its identity; empty when it names none. */
export function identityOf(healthBody: Uint8Array): BoxIdentity {
  try {
    const h = JSON.parse(new TextDecoder().decode(healthBody)) as { pin?: unknown; appliance?: unknown };
    const out: BoxIdentity = {};
    if (typeof h.pin === "string") out.pin = h.pin;
    if (typeof h.appliance === "string") out.appliance = h.appliance;
    return out;
  } catch {
    return {};
  }
}

/** Whether two identities are one box. Unknown identities are never the same box. */
export function sameBox(a: BoxIdentity, b: BoxIdentity): boolean {
  if (a.pin && b.pin) return a.pin === b.pin;
  return a.appliance !== undefined && a.appliance === b.appliance;
}

/** Whether the box `id` issued the receipt `body` (a box's JSON receipt). */
export function issued(id: BoxIdentity, body: string): boolean {
  try {
    const r = JSON.parse(body) as { pin?: unknown; appliance?: unknown };
    if (typeof r.pin === "string" && id.pin) return r.pin === id.pin;
    return typeof r.appliance === "string" && r.appliance === id.appliance;
  } catch {
    return false;
  }
}

/**
 * How many boxes each save goes to: 2 when `hallCopies` (the option, else the list's, else 2)
 * is not 1 and the boxes known are two or more (configured ones by name, listed ones by pin).
 */
export function copiesWanted(hallCopies: number | undefined, configured: RelayConfig[], list: RelayList | null): 1 | 2 {
  const copies = hallCopies ?? list?.hall_copies ?? 2;
  if (copies < 2) return 1;
  const boxes = new Set<string>();
  for (const r of configured) boxes.add(`name:${r.name}`);
  for (const r of list?.relays ?? []) boxes.add(`pin:${r.pin}`);
  return boxes.size >= 2 ? 2 : 1;
}

/**
 * The pin to send in `Hallrelay-Also-Held` to the box `to`: another box that holds the newest
 * save held by any box (`newestReceipts`, that save's receipts), or undefined.
 */
export function alsoHeldFor(to: BoxIdentity, newestReceipts: string[]): string | undefined {
  for (const body of newestReceipts) {
    try {
      const pin = (JSON.parse(body) as { pin?: unknown }).pin;
      if (typeof pin === "string" && pin !== to.pin) return pin;
    } catch {
      // Not a receipt: names no box.
    }
  }
  return undefined;
}

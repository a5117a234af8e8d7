/**
 * The relay list: the hall boxes the cloud says a candidate may fail over to
 * (`GET /v1/exams/{exam}/relays` with the candidate's token), and the URLs a browser tries for
 * each. A browser cannot pin a key: whether a box is trusted is decided by the exam browser's
 * own configuration of certificates (docs/browser-clients.md), and a box it does not trust
 * fails the TLS handshake before any byte of a save is sent.
 */

/** A box to try: its name and the base URLs it may answer on, in order. */
export interface RelayConfig {
  name: string;
  urls: string[];
}

/** One box of the cloud's list, as it answers. */
export interface ListedRelay {
  name: string;
  pin: string;
  addresses: string[];
}

/** The cloud's list, as it answered and as the journal keeps it. */
export interface RelayList {
  venue: string;
  relays: ListedRelay[];
  /** How many listed boxes each save goes to while the cloud is gone: 1 turns two-box writing off; absent means 2. */
  hall_copies?: number;
  fetched_at?: string;
}

const PIN = /^sha256\/\/[A-Za-z0-9+/]{43}=$/;
const ADDRESS = /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.%a-zA-Z]+\]):\d{1,5}$/;
const LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/**
 * The list without what cannot be used: a box whose pin is no pin, an address that is not
 * `ip:port` (dropped alone). Throws if it is no list at all.
 */
export function checkRelayList(json: unknown): RelayList {
  const list = json as { venue?: unknown; relays?: unknown; fetched_at?: unknown; hall_copies?: unknown };
  if (typeof list?.venue !== "string" || !Array.isArray(list.relays)) {
    throw new Error("the relay list is not {venue, relays: […]}");
  }
  const relays: ListedRelay[] = [];
  for (const r of list.relays as { name?: unknown; pin?: unknown; addresses?: unknown }[]) {
    if (typeof r?.name !== "string" || typeof r.pin !== "string" || !PIN.test(r.pin)) continue;
    const addresses = Array.isArray(r.addresses) ? r.addresses.filter((a): a is string => typeof a === "string" && ADDRESS.test(a)) : [];
    relays.push({ name: r.name, pin: r.pin, addresses });
  }
  const out: RelayList = { venue: list.venue, relays };
  if (typeof list.fetched_at === "string") out.fetched_at = list.fetched_at;
  if (list.hall_copies === 1 || list.hall_copies === 2) out.hall_copies = list.hall_copies;
  return out;
}

/**
 * The URLs to try for a listed box: each address it reported (`https://ADDRESS`), then its
 * name over mDNS (`https://NAME.local:PORT` for each port), for the operating systems that
 * resolve `.local` names; the addresses come first because an unresolved `.local` name can
 * take seconds to fail.
 */
export function urlsOf(relay: ListedRelay): string[] {
  const urls = relay.addresses.map((a) => `https://${a}`);
  if (LABEL.test(relay.name)) {
    const ports = [...new Set(relay.addresses.map((a) => a.slice(a.lastIndexOf(":") + 1)))];
    for (const port of ports) urls.push(`https://${relay.name.toLowerCase()}.local:${port}`);
  }
  return urls;
}

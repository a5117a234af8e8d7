/**
 * The candidate's autosave client for a browser exam page: the Rust `Autosaver`'s rules
 * (crates/client/src/autosaver.rs), on IndexedDB, fetch and WebCrypto.
 *
 * - Journal first: a save is sealed (to the exam's keys) and written to the IndexedDB journal,
 *   its transaction completed, before any network call.
 * - Cloud first: saves go to the cloud while it answers.
 * - Failover: once the cloud has been failing for `failoverAfterMs`, the boxes of the exam
 *   configuration and of the cloud's relay list are tried (their health first: no payload goes
 *   to a box the browser has not connected to); saves then go to the first that answers.
 * - Probe and return: while on a box the cloud is asked every `probeEveryMs`; when it answers
 *   it is sent everything it lacks, with the boxes' receipts, and saves go there again.
 * - Two boxes in one hall: while on a box, each save also goes to a second box at once, when
 *   two are known and `hallCopies` is not 1 (./fanout.ts).
 * - Every change worth showing a candidate is a [`HallEvent`] with a plain sentence.
 * - A spare laptop: a fresh journal first asks the cloud (else every box it may use, taking the
 *   highest) for the candidate's newest save, restores it (`restored`, opened with `restoreCode`
 *   when sealed) and continues after it; saves made before anyone answers wait without a seq.
 *   Every save names the journal's device (`Hallrelay-Device`); a 409 `continued_elsewhere`
 *   stops saving (`continued-elsewhere`): the candidate carries on on another laptop.
 * - A laptop that was never online takes the exam's keys and relays from a box's copy of the
 *   platform-signed exam configuration (checked with `platformKeys`); with a box-only token
 *   (it names its box) the cloud is never asked and saves go to the box from the first one.
 *
 * Operations run one at a time (as the Rust client's `&mut self`), except journaling: a save is
 * journaled at once even while an earlier one waits on the network.
 */

import { toBase64, toBase64Url, utf8 } from "./bytes.js";
import { looksLikeEnvelope, open as openEnvelope, publicKeyFromText, restoreKeyPair, ROLE_RESTORE, seal, type SealKeys } from "./envelope.js";
import { events, type HallEvent } from "./events.js";
import {
  claimedBox,
  keySetFromJson,
  parsePlatformKeys,
  verifyExamConfig,
  verifyExamKeys,
  type ExamConfigDocument,
  type ExamKeysDocument,
  type PlatformKey,
} from "./examKeys.js";
import { addressSpaceOf, join, localNetworkPermission, message, readPut, request, tellLeft, type Put, type Reply } from "./http.js";
import { Journal, type Entry } from "./journal.js";
import { checkRelayList, urlsOf, type RelayConfig, type RelayList } from "./relays.js";
import { alsoHeldFor, copiesWanted, identityOf, issued, sameBox, type BoxIdentity } from "./fanout.js";

/** How long a box's health probe, and the cloud's probes and key and list requests, may take. */
const PROBE_TIMEOUT_MS = 3000;
/** The most box receipts the cloud takes with one save. */
const MAX_FORWARDED_RECEIPTS = 4;
const ID = /^[A-Za-z0-9._-]{1,64}$/;

export interface AutosaverConfig {
  /** The platform's base URL, `https://…`. */
  cloud: string;
  exam: string;
  candidate: string;
  /** The candidate's token (sent as `Authorization: Bearer`). */
  token: string;
  /** Boxes from the exam configuration, tried before those of the cloud's relay list. */
  relays?: RelayConfig[];
  /**
   * The platform's Ed25519 token keys the exam keys must be signed by: lines `KID PUBLIC` or
   * `PUBLIC` (base64url), or a key set JSON. Absent: the ones the cloud publishes at
   * `/v1/platform/keys`.
   */
  platformKeys?: string[];
  /** `"encrypt"` (the default): every save is sealed to the exam's keys before it is journaled. */
  privacy?: "encrypt" | "plaintext";
  /** How long the cloud must have been failing before boxes are tried (default 60000). */
  failoverAfterMs?: number;
  /** How often the cloud is asked again while on a box, and boxes looked for again (default 5000). */
  probeEveryMs?: number;
  /** How long one save request may take (default 10000). */
  requestTimeoutMs?: number;
  /** The IndexedDB database name (default `"hallrelay"`). */
  database?: string;
  /** Called with every event. */
  onEvent?: (event: HallEvent) => void;
  /** The IndexedDB to use (default `globalThis.indexedDB`; tests pass another). */
  indexedDB?: IDBFactory;
  /** Whether `start()` also flushes in the background every `probeEveryMs` (default true). */
  background?: boolean;
  /**
   * How many hall boxes each save goes to while the cloud is gone: 1 turns two-box writing
   * off, 2 asks for it. Absent: the relay list's `hall_copies`, else 2. Two boxes are used only
   * when two are known (./fanout.ts).
   */
  hallCopies?: 1 | 2;
  /**
   * The restore code on the candidate's exam card: a fresh journal opens the newest save it
   * restores with it (the `restored` event). Without it a sealed save is not opened, but its
   * seq is still continued after.
   */
  restoreCode?: string;
}

/** Where a save landed when `save` returned. */
export interface SaveResult {
  seq: number;
  landed: "cloud" | "box" | "laptop";
  /** The box's name, when it landed on one. */
  box?: string;
  /** The box's URL, when it landed on one. */
  url?: string;
  /** The box's receipt (its JSON body), when it landed on one. */
  receipt?: string;
  /** How many hall boxes hold it (each acknowledged it): 2 when two-box mode wrote it to two. */
  boxes?: number;
}

/** Bad configuration: nothing was opened. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** A save that was not taken (empty, or the journal cannot be written, or `code` `continued_elsewhere`: the candidate carries on on another laptop). */
export class SaveError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = "SaveError";
  }
}

/** The cloud gave no answer (as opposed to a refusal): a box may be asked instead. */
class CloudUnreachable extends Error {}

/** The error code of a 409 refusing a save from a device the candidate left. */
const CONTINUED_ELSEWHERE = "continued_elsewhere";

/** A candidate's newest save as a server holds it. */
interface Newest {
  seq: number;
  final: boolean;
  bytes: Uint8Array;
}

interface Prospect {
  name: string;
  url: string;
}

/** A box in use: where it is, and which box it said it is. */
interface Relay extends Prospect {
  id: BoxIdentity;
}

/** One candidate's autosave client. */
export class Autosaver {
  private readonly failoverAfterMs: number;
  private readonly probeEveryMs: number;
  private readonly requestTimeoutMs: number;
  private readonly encrypt: boolean;
  /** A box-only token: the cloud refuses it, so it is never asked. */
  private readonly boxOnly: boolean;
  private relay: Relay | null = null;
  /** The boxes saves went to since the client was last on the cloud: each is told when it returns there. */
  private usedBoxes: Relay[] = [];
  /** The second box each save also goes to (two-box mode), and when one was last looked for. */
  private second: Relay | null = null;
  private lastSecondSearch: number | null = null;
  private cloudDownSince: number | null = null;
  private lastProbe = Date.now();
  private lastSearch: number | null = null;
  private told = new Set<string>();
  private lastNewestAsk: number | null = null;
  private continuedElsewhereBy: string | null = null;
  private learnt: RelayList | null = null;
  private relaysDue = true;
  private lastRelaysAsk: number | null = null;
  private sealKeys: SealKeys | null = null;
  private lastKeysAsk: { at: number; error: string } | null = null;
  private saidAwaitingKeys = false;
  private chain: Promise<unknown> = Promise.resolve();
  private timer: ReturnType<typeof setInterval> | null = null;
  private closed = false;
  private sent = 0;
  private readonly onOnline = () => void this.flush().catch(() => undefined);

  /** Whether the browser granted persistent storage (`navigator.storage.persist()`); undefined where it cannot be asked. */
  persisted: boolean | undefined;

  private constructor(
    private readonly config: AutosaverConfig,
    private readonly journal: Journal,
    private readonly platformKeys: PlatformKey[] | null,
  ) {
    this.failoverAfterMs = config.failoverAfterMs ?? 60_000;
    this.probeEveryMs = config.probeEveryMs ?? 5_000;
    this.requestTimeoutMs = config.requestTimeoutMs ?? 10_000;
    this.encrypt = (config.privacy ?? "encrypt") === "encrypt";
    this.boxOnly = claimedBox(config.token) !== undefined;
  }

  /** Checks the configuration, opens the IndexedDB journal and asks for persistent storage. */
  static async open(config: AutosaverConfig): Promise<Autosaver> {
    for (const [what, id] of [["exam", config.exam], ["candidate", config.candidate]] as const) {
      if (typeof id !== "string" || !ID.test(id)) throw new ConfigError(`the ${what} id ${JSON.stringify(id)} must match [A-Za-z0-9._-]{1,64}`);
    }
    checkCloudUrl(config.cloud);
    if (!config.token) throw new ConfigError("the candidate's token is missing: pass the token the platform gave this candidate");
    if (config.hallCopies !== undefined && config.hallCopies !== 1 && config.hallCopies !== 2) {
      throw new ConfigError(`hallCopies is 1 or 2, not ${JSON.stringify(config.hallCopies)}`);
    }
    if (config.privacy && config.privacy !== "encrypt" && config.privacy !== "plaintext") {
      throw new ConfigError(`privacy is "encrypt" or "plaintext", not ${JSON.stringify(config.privacy)}`);
    }
    for (const relay of config.relays ?? []) {
      for (const url of relay.urls) {
        if (!/^https:\/\/[^/]+\/?$/.test(url)) throw new ConfigError(`the relay URL ${JSON.stringify(url)} must be https://HOST[:PORT]`);
      }
    }
    let platformKeys: PlatformKey[] | null = null;
    if (config.platformKeys) {
      try {
        platformKeys = await parsePlatformKeys(config.platformKeys);
      } catch (error) {
        throw new ConfigError(`the platform keys: ${(error as Error).message}`);
      }
      if (platformKeys.length === 0) throw new ConfigError("platformKeys is empty: give the platform's keys, or leave it out to use the cloud's");
    }
    const factory = config.indexedDB ?? globalThis.indexedDB;
    if (!factory) throw new ConfigError("this browser has no IndexedDB (a private window may not): the journal needs it");
    const journal = await Journal.open(factory, config.database ?? "hallrelay", config.exam, config.candidate);
    const autosaver = new Autosaver(config, journal, platformKeys);
    autosaver.persisted = await askPersistence();
    autosaver.learnt = (await journal.getMeta<RelayList>("relays")) ?? null;
    // A page reloaded mid-outage fails over as soon as it is due, not `failoverAfterMs` later.
    const downSince = await journal.getMeta<number>("cloudDownSince");
    if (typeof downSince === "number" && downSince <= Date.now()) autosaver.cloudDownSince = downSince;
    if (autosaver.encrypt) autosaver.sealKeys = await autosaver.loadKeys();
    return autosaver;
  }

  /**
   * While the cloud answers: learns the exam's keys and relays (kept in the journal) and the
   * newest seq of a fresh journal, then sends what earlier runs left undelivered. Starts the
   * background flush (every `probeEveryMs`, and when the browser comes back online).
   */
  async start(): Promise<void> {
    await this.run(async () => {
      await this.settleNumbering();
      if (this.encrypt && !this.sealKeys) await this.learnKeys().catch(() => undefined);
      if (!this.boxOnly) await this.learnRelays();
    });
    await this.flush();
    if (this.config.background !== false && !this.timer && !this.closed) {
      this.timer = setInterval(() => {
        void this.journal.notInCloud().then((p) => (p.length > 0 ? this.flush() : 0)).catch(() => undefined);
      }, this.probeEveryMs);
      globalThis.addEventListener?.("online", this.onOnline);
    }
  }

  /**
   * Journals `payload` as the next save (sealed first, unless the keys are not known yet),
   * then sends it where it can go. Rejects only if the save was not taken: empty, or the
   * journal could not be written.
   */
  async save(payload: Uint8Array | string, options: { final?: boolean } = {}): Promise<SaveResult> {
    if (this.closed) throw new SaveError("the autosaver is closed, so the save was not taken");
    const bytes = typeof payload === "string" ? utf8(payload) : payload;
    if (bytes.length === 0) throw new SaveError("the save is empty (0 bytes), so it was not taken: pass the saved state's bytes");
    const final = options.final === true;
    if (this.continuedElsewhereBy !== null) {
      throw new SaveError(
        `this candidate's exam continues on another laptop (${this.continuedElsewhereBy} said so), so this computer no longer saves: carry on on the other laptop`,
        CONTINUED_ELSEWHERE,
      );
    }
    const numbered = await this.run(async () => {
      await this.settleNumbering();
      return this.journal.isNumbered();
    });
    if (!numbered) {
      try {
        await this.journal.appendPending(bytes, final);
      } catch (error) {
        throw new SaveError(`the save was not taken: ${(error as Error).message}`);
      }
      this.emit(events.saved(0, "laptop", new Date()));
      return { seq: 0, landed: "laptop" };
    }
    const keys = this.encrypt ? this.sealKeys : null;
    let entry: Entry;
    try {
      entry = await this.journal.append(0, final, async (seq) =>
        !this.encrypt
          ? { bytes, awaitsKeys: false }
          : keys
            ? { bytes: await seal(keys, this.saveOf(seq, final), bytes), awaitsKeys: false }
            : { bytes, awaitsKeys: true },
      );
    } catch (error) {
      throw new SaveError(`the save was not taken: ${(error as Error).message}`);
    }
    return this.run(async () => {
      const result = await this.deliverJournaled(entry);
      await this.keepTwo();
      if (result.landed === "box") result.boxes = (await this.journal.get(result.seq))?.receipts.length ?? 1;
      this.emit(events.saved(result.seq, result.landed, new Date(), result.box ? { name: result.box, url: result.url ?? "" } : undefined, result.boxes));
      return result;
    });
  }

  /** Tries now to send what the cloud lacks (or, while it is gone, what no box holds). Returns how many saves were taken. */
  async flush(): Promise<number> {
    return this.run(async () => {
      const before = this.sent;
      if (this.continuedElsewhereBy !== null) return 0;
      await this.settleNumbering();
      await this.sealWaiting();
      await this.probeCloud();
      if (!this.relay && this.boxOnly) {
        if ((await this.journal.onlyHere()).length > 0) await this.failOver();
      } else if (!this.relay && (await this.sendable()).length > 0) {
        const wasDown = this.cloudDownSince !== null;
        const pending = (await this.sendable()).length;
        if (await this.resendToCloud()) {
          this.cloudIsBack();
          if (wasDown) this.emit(events.backToCloud(pending));
        } else if (this.failoverDue()) {
          await this.failOver();
        }
      }
      if (this.relay) {
        await this.sendHeldHereToRelay();
        await this.keepTwo();
      }
      return this.sent - before;
    });
  }

  /**
   * On a fresh journal: learns where the candidate's saves stand, numbers the saves that waited,
   * and restores the newest save (`restored`, `nothing-to-restore`, or `waiting-to-continue`).
   * Resolves with whether the journal gives out seqs now. `start`, `save` and `flush` do the
   * same; call it to show restored answers before the first save.
   */
  async restoreOnStart(): Promise<boolean> {
    return this.run(async () => {
      this.lastNewestAsk = null;
      await this.settleNumbering();
      return this.journal.isNumbered();
    });
  }

  /** Who said the candidate continued on another device (this autosaver saves no more), or null. */
  continuedElsewhere(): string | null {
    return this.continuedElsewhereBy;
  }

  /** This journal's device id, sent as `Hallrelay-Device` with every save. */
  device(): string {
    return this.journal.deviceId;
  }

  /** Seqs journaled and not yet acknowledged by the cloud, oldest first. */
  async pending(): Promise<number[]> {
    return this.journal.notInCloud();
  }

  /** The box saves go to now, if the cloud is gone and one answered. */
  currentRelay(): { name: string; url: string } | null {
    return this.relay ? { ...this.relay } : null;
  }

  /** Stops the background flush and closes the journal once running work is done. */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    globalThis.removeEventListener?.("online", this.onOnline);
    void this.chain.finally(() => this.journal.close());
  }

  // ---- one operation at a time ----

  private run<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.chain.then(operation);
    this.chain = result.catch(() => undefined);
    return result;
  }

  private saveOf(seq: number, final: boolean) {
    return { exam: this.config.exam, candidate: this.config.candidate, seq, final };
  }

  // ---- keys ----

  private async loadKeys(): Promise<SealKeys | null> {
    const doc = await this.journal.getMeta<ExamKeysDocument>("examKeys");
    if (!doc) return this.loadConfigKeys();
    let platform = this.platformKeys;
    if (!platform) {
      const stored = await this.journal.getMeta<unknown>("platformKeys");
      if (!stored) return null;
      try {
        platform = keySetFromJson(stored);
      } catch {
        return null;
      }
    }
    try {
      return await verifyExamKeys(doc, platform, this.config.exam, this.config.candidate);
    } catch {
      // Changed on this computer, or the configured keys changed: asked again from the cloud.
      return null;
    }
  }

  /** The platform's keys: configured, or those the cloud gave earlier. */
  private async knownPlatformKeys(): Promise<PlatformKey[] | null> {
    if (this.platformKeys) return this.platformKeys;
    const stored = await this.journal.getMeta<unknown>("platformKeys");
    if (!stored) return null;
    try {
      return keySetFromJson(stored);
    } catch {
      return null;
    }
  }

  /** The keys of a box's exam configuration kept in the journal, checked again. */
  private async loadConfigKeys(): Promise<SealKeys | null> {
    const doc = await this.journal.getMeta<ExamConfigDocument>("examConfig");
    const platform = await this.knownPlatformKeys();
    if (!doc || !platform) return null;
    try {
      await verifyExamConfig(doc, platform, this.config.exam);
      return await this.configKeys(doc);
    } catch {
      return null;
    }
  }

  private async configKeys(doc: ExamConfigDocument): Promise<SealKeys> {
    const keys: SealKeys = { exam: publicKeyFromText(doc.exam_key) };
    if (this.config.restoreCode) keys.restore = (await restoreKeyPair(this.config.restoreCode, this.config.exam, this.config.candidate)).publicKey;
    return keys;
  }

  /**
   * Asks the boxes for the exam's platform-signed configuration, checks it with the platform's
   * keys, keeps it in the journal, and seals to its exam key (and the restore code's key).
   */
  private async learnFromBox(): Promise<void> {
    const platform = await this.knownPlatformKeys();
    if (!platform) {
      throw new Error("the platform's keys are not on this computer, so a box's exam configuration cannot be checked: configure platformKeys");
    }
    let last = "no hall relay answered";
    for (const prospect of this.prospects()) {
      if (typeof (await this.tryBox(prospect)) === "string") continue;
      const space = addressSpaceOf(prospect.url);
      try {
        const reply = await request(join(prospect.url, `/v1/exams/${this.config.exam}/config`), {
          token: this.config.token,
          timeoutMs: PROBE_TIMEOUT_MS,
          ...(space ? { targetAddressSpace: space } : {}),
        });
        if (reply.status !== 200) {
          last = `the hall relay ${prospect.name} answered ${reply.status}: ${message(reply)}`;
          continue;
        }
        const doc = JSON.parse(new TextDecoder().decode(reply.body)) as ExamConfigDocument;
        await verifyExamConfig(doc, platform, this.config.exam);
        const keys = await this.configKeys(doc);
        await this.journal.putMeta("examConfig", doc);
        const first = this.sealKeys === null;
        this.sealKeys = keys;
        this.lastKeysAsk = null;
        if (!this.learnt) {
          this.learnt = { venue: doc.venue, relays: doc.relays, fetched_at: doc.issued_at };
          await this.journal.putMeta("relays", this.learnt).catch(() => undefined);
        }
        this.emit(events.examConfigLearnt(prospect.name, doc.venue, doc.relays.length));
        if (first) this.emit(events.encrypting(keys.restore !== undefined));
        return;
      } catch (error) {
        last = `the hall relay ${prospect.name}'s exam configuration is refused: ${(error as Error).message}`;
      }
    }
    throw new Error(last);
  }

  /** Asks the cloud for the exam's keys (else a box's signed exam configuration), checks them and keeps them in the journal. */
  private async learnKeys(): Promise<void> {
    if (this.boxOnly) {
      try {
        await this.learnFromBox();
      } catch (error) {
        this.lastKeysAsk = { at: Date.now(), error: (error as Error).message };
        throw error;
      }
      return;
    }
    try {
      await this.learnKeysFromCloud();
    } catch (error) {
      if (error instanceof CloudUnreachable && this.prospects().length > 0) {
        try {
          await this.learnFromBox();
          return;
        } catch {
          // The cloud's reason is the one to tell.
        }
      }
      throw error;
    }
  }

  private async learnKeysFromCloud(): Promise<void> {
    try {
      let platform = this.platformKeys;
      if (!platform) {
        const set = await this.getJson("/v1/platform/keys", "platform keys");
        platform = keySetFromJson(set);
        await this.journal.putMeta("platformKeys", set);
      }
      const doc = (await this.getJson(`/v1/exams/${this.config.exam}/keys`, "exam keys")) as ExamKeysDocument;
      const keys = await verifyExamKeys(doc, platform, this.config.exam, this.config.candidate);
      await this.journal.putMeta("examKeys", doc);
      const first = this.sealKeys === null;
      this.sealKeys = keys;
      this.lastKeysAsk = null;
      if (first) this.emit(events.encrypting(keys.restore !== undefined));
    } catch (error) {
      this.lastKeysAsk = { at: Date.now(), error: (error as Error).message };
      throw error;
    }
  }

  private async getJson(path: string, what: string): Promise<unknown> {
    let reply: Reply;
    try {
      reply = await request(join(this.config.cloud, path), { token: this.config.token, timeoutMs: PROBE_TIMEOUT_MS });
    } catch (error) {
      throw new CloudUnreachable(`the cloud cannot be asked for the ${what} now (${(error as Error).message})`);
    }
    if (reply.status < 200 || reply.status > 299) {
      if (reply.status >= 500) throw new CloudUnreachable(`the cloud cannot be asked for the ${what} now (it answered ${reply.status})`);
      throw new Error(`the cloud refused to give the ${what} (${reply.status})`);
    }
    try {
      return JSON.parse(new TextDecoder().decode(reply.body));
    } catch (error) {
      throw new Error(`the cloud's ${what} are not valid JSON: ${(error as Error).message}`);
    }
  }

  /** Seals the saves that waited for the keys, asking the cloud for them at most every `probeEveryMs`. Returns how many. */
  private async sealWaiting(): Promise<number> {
    if (!this.encrypt) return 0;
    const waiting = await this.journal.awaitingKeys();
    if (waiting.length === 0) return 0;
    if (!this.sealKeys) {
      if (this.lastKeysAsk && Date.now() - this.lastKeysAsk.at < this.probeEveryMs) return 0;
      try {
        await this.learnKeys();
      } catch {
        return 0;
      }
    }
    const keys = this.sealKeys;
    if (!keys) return 0;
    for (const seq of waiting) {
      const entry = await this.journal.get(seq);
      if (!entry?.awaitsKeys) continue;
      await this.journal.seal(seq, await seal(keys, this.saveOf(seq, entry.final), entry.bytes));
    }
    this.saidAwaitingKeys = false;
    return waiting.length;
  }

  // ---- delivery ----

  private async deliverJournaled(journaled: Entry): Promise<SaveResult> {
    const sealedNow = await this.sealWaiting();
    const seq = journaled.seq;
    const entry = await this.journal.get(seq);
    let result: SaveResult;
    if (!entry) {
      // Pruned: the cloud has it (a flush sent it meanwhile).
      result = { seq, landed: "cloud" };
    } else if (entry.held !== "laptop") {
      result = this.resultOf(entry);
    } else if (entry.awaitsKeys) {
      if (!this.saidAwaitingKeys) {
        this.saidAwaitingKeys = true;
        this.emit(events.awaitingKeys(this.lastKeysAsk?.error ?? "the cloud has not given them yet"));
      }
      result = { seq, landed: "laptop" };
    } else {
      result = await this.deliver(entry);
    }
    if (sealedNow > 0) {
      if (result.landed === "cloud") await this.resendToCloud();
      else if (result.landed === "box") await this.sendHeldHereToRelay();
    }
    if (result.landed === "cloud" && this.relaysDue && (this.lastRelaysAsk === null || Date.now() - this.lastRelaysAsk >= this.probeEveryMs)) {
      await this.learnRelays();
    }
    return result;
  }

  private resultOf(entry: Entry): SaveResult {
    if (entry.held === "cloud") return { seq: entry.seq, landed: "cloud" };
    if (entry.held === "box") {
      const receipt = entry.receipts[entry.receipts.length - 1];
      const r: SaveResult = { seq: entry.seq, landed: "box" };
      if (this.relay) {
        r.box = this.relay.name;
        r.url = this.relay.url;
      }
      if (receipt) r.receipt = receipt;
      r.boxes = entry.receipts.length;
      return r;
    }
    return { seq: entry.seq, landed: "laptop" };
  }

  private async deliver(entry: Entry): Promise<SaveResult> {
    const seq = entry.seq;
    await this.probeCloud();
    if (!this.relay && this.boxOnly) {
      // A box-only token: the box, from the first save.
      await this.failOver();
      const now = await this.journal.get(seq);
      return now && now.held === "box" && this.relay ? this.resultOf(now) : { seq, landed: "laptop" };
    }
    if (!this.relay) {
      const put = await this.put(this.config.cloud, entry, false);
      switch (put.kind) {
        case "stored":
          await this.journal.markCloud(seq);
          if (this.cloudDownSince !== null) {
            const resent = (await this.sendable()).length;
            this.cloudIsBack();
            this.emit(events.backToCloud(resent));
            await this.resendToCloud();
          }
          return { seq, landed: "cloud" };
        case "refused":
          this.rejected(seq, "the cloud", put.status, put.reason, put.code);
          return { seq, landed: "laptop" };
        default:
          this.cloudFailed(put.error);
          if (!this.failoverDue()) return { seq, landed: "laptop" };
          await this.failOver();
          // A new relay was sent what only the journal held, this save included.
          const now = await this.journal.get(seq);
          return now && now.held === "box" && this.relay ? this.resultOf(now) : { seq, landed: "laptop" };
      }
    }
    // To the box in use and, in two-box mode, the second at once.
    await this.toHall(entry);
    const now = await this.journal.get(seq);
    return now && now.held === "box" && this.relay ? this.resultOf(now) : { seq, landed: "laptop" };
  }

  /** Saves that can be sent (not waiting for keys) and the cloud lacks, oldest first. */
  private async sendable(): Promise<number[]> {
    return (await this.journal.entries()).filter((e) => e.held !== "cloud" && !e.awaitsKeys).map((e) => e.seq);
  }

  /** While on a box, asks the cloud (at most every `probeEveryMs`) whether it answers again, and if so returns to it. */
  private async probeCloud(): Promise<void> {
    if (!this.relay || this.boxOnly || Date.now() - this.lastProbe < this.probeEveryMs) return;
    this.lastProbe = Date.now();
    let healthy = false;
    try {
      const reply = await request(join(this.config.cloud, "/v1/health"), { timeoutMs: PROBE_TIMEOUT_MS });
      healthy = reply.status >= 200 && reply.status <= 299;
    } catch {
      healthy = false;
    }
    if (!healthy) return;
    // Leave the box only once the cloud has taken what it lacks.
    const resent = (await this.sendable()).length;
    if (await this.resendToCloud()) {
      this.relay = null;
      this.cloudIsBack();
      this.emit(events.backToCloud(resent));
    }
  }

  private cloudIsBack(): void {
    this.tellBoxesLeft();
    this.second = null;
    this.lastSecondSearch = null;
    if (this.cloudDownSince !== null) void this.journal.putMeta("cloudDownSince", null).catch(() => undefined);
    this.cloudDownSince = null;
    this.told.clear();
    this.lastSearch = null;
    // Boxes may have been enrolled or revoked meanwhile.
    this.relaysDue = true;
  }

  /**
   * Tells every box used since the client was last on the cloud that the candidate went back
   * to it (`POST …/left`), so that its console shows them "back on the cloud", not silent.
   * In the background: a save never waits for it.
   */
  /** Notes a box saves go to, to be told when the candidate is back on the cloud. */
  private noteUsed(relay: Relay): void {
    if (!this.usedBoxes.some((b) => b.url === relay.url)) this.usedBoxes.push(relay);
  }

  private tellBoxesLeft(): void {
    if (this.usedBoxes.length === 0) return;
    const boxes = this.usedBoxes.splice(0);
    void tellLeft(boxes, this.config.exam, this.config.candidate, this.config.token, PROBE_TIMEOUT_MS).catch(() => undefined);
  }

  private cloudFailed(error: string): void {
    if (this.cloudDownSince === null) {
      this.cloudDownSince = Date.now();
      void this.journal.putMeta("cloudDownSince", this.cloudDownSince).catch(() => undefined);
      this.emit(events.cloudUnreachable(error));
    }
  }

  private failoverDue(): boolean {
    return this.boxOnly || this.cloudDownSince !== null && Date.now() - this.cloudDownSince >= this.failoverAfterMs;
  }

  /** Sends the cloud every save it lacks, oldest first, with the boxes' receipts. False if the cloud stopped answering on the way. */
  private async resendToCloud(): Promise<boolean> {
    for (const seq of await this.sendable()) {
      if (this.continuedElsewhereBy !== null) return true;
      const entry = await this.journal.get(seq);
      if (!entry || entry.held === "cloud" || entry.awaitsKeys) continue;
      const put = await this.put(this.config.cloud, entry, false);
      if (put.kind === "stored") await this.journal.markCloud(seq);
      else if (put.kind === "refused") this.rejected(seq, "the cloud", put.status, put.reason, put.code);
      else {
        this.cloudFailed(put.error);
        return false;
      }
    }
    return true;
  }

  /** The boxes to try, in order: the configured ones, then the cloud's list (each URL once). */
  private prospects(): Prospect[] {
    const out: Prospect[] = [];
    const seen = new Set<string>();
    const add = (name: string, url: string) => {
      const u = url.replace(/\/+$/, "");
      if (!seen.has(u)) {
        seen.add(u);
        out.push({ name, url: u });
      }
    };
    for (const relay of this.config.relays ?? []) for (const url of relay.urls) add(relay.name, url);
    for (const relay of this.learnt?.relays ?? []) for (const url of urlsOf(relay)) add(relay.name, url);
    return out;
  }

  /** Looks for a box that answers and, if one does, makes it the relay and sends it what only the journal holds. */
  private async failOver(): Promise<void> {
    if (this.lastSearch !== null && Date.now() - this.lastSearch < this.probeEveryMs) return;
    this.lastSearch = Date.now();
    for (const prospect of this.prospects()) {
      const why = await this.tryBox(prospect);
      if (typeof why !== "string") {
        this.relay = { ...prospect, id: why };
        this.noteUsed(this.relay);
        this.told.clear();
        this.lastProbe = Date.now();
        this.emit(events.failedOver(prospect.name, prospect.url));
        await this.sendHeldHereToRelay();
        return;
      }
      if (why !== "blocked") this.emitOnce(events.boxRefused(prospect.url, why));
    }
    this.emitOnce(events.noTrustedBox());
  }

  /**
   * Asks a box for its health: no payload goes to a box before the browser has connected to
   * it, which it does only if it trusts the box's certificate. Which box it is, if it answers;
   * "blocked" if Local Network Access stopped it (said as its own event); otherwise why not.
   */
  private async tryBox(box: Prospect): Promise<string | BoxIdentity> {
    const space = addressSpaceOf(box.url);
    try {
      const reply = await request(join(box.url, "/v1/health"), { timeoutMs: PROBE_TIMEOUT_MS, ...(space ? { targetAddressSpace: space } : {}) });
      if (reply.status >= 200 && reply.status <= 299) return identityOf(reply.body);
      return `it answered ${reply.status}`;
    } catch (error) {
      if (await this.blockedByBrowser(box)) return "blocked";
      return `it does not answer, or this exam browser does not trust its certificate (${(error as Error).message})`;
    }
  }

  /** Whether a failed request to `box` is the browser's Local Network Access refusal (then said once). */
  private async blockedByBrowser(box: Prospect): Promise<boolean> {
    const space = addressSpaceOf(box.url);
    if (!space) return false;
    const state = await localNetworkPermission(space);
    if (state === undefined || state === "granted") return false;
    this.emitOnce(events.localNetworkBlocked(box.name, box.url, state === "prompt" ? "not granted" : state));
    return true;
  }

  private async lostBox(error: string): Promise<void> {
    const relay = this.relay;
    if (!relay) return;
    this.relay = null;
    this.lastSearch = null;
    if (!(await this.blockedByBrowser(relay))) this.emit(events.boxLost(relay.name, error));
  }

  /** Sends the relay (and, in two-box mode, the second box) every save only the journal holds. */
  private async sendHeldHereToRelay(): Promise<void> {
    for (const seq of await this.journal.onlyHere()) {
      if (this.continuedElsewhereBy !== null) return;
      const entry = await this.journal.get(seq);
      if (!this.relay) return;
      if (!entry || entry.held !== "laptop" || entry.awaitsKeys) continue;
      if (!(await this.toHall(entry))) return;
    }
  }

  // ---- two boxes in one hall (./fanout.ts) ----

  /**
   * Sends `entry` to each box in use that does not hold it yet, both at once. False when sending
   * more now is pointless (a box asked for time, or none is left).
   */
  private async toHall(entry: Entry): Promise<boolean> {
    const lacks = (r: Relay | null): r is Relay => r !== null && !entry.receipts.some((body) => issued(r.id, body));
    const targets = [this.second, this.relay].filter(lacks);
    const newest = (await this.journal.entries()).filter((e) => e.held === "box").pop()?.receipts ?? [];
    const answers = await Promise.all(targets.map(async (relay) => ({ relay, put: await this.put(relay.url, entry, true, alsoHeldFor(relay.id, newest)) })));
    let goOn = true;
    // The second's answer first: when both failed, the first is not replaced by a box that just failed too.
    for (const { relay, put } of answers) {
      if (put.kind === "stored") await this.journal.markBox(entry.seq, put.receipt);
      else if (put.kind === "refused") this.rejected(entry.seq, `the hall relay ${relay.name}`, put.status, put.reason, put.code);
      else if (put.kind === "busy") goOn = false;
      else await this.hallBoxFailed(relay, put.error);
    }
    return goOn && this.relay !== null;
  }

  /** A box in use stopped answering: the second replaces the first, and another box is looked for later. */
  private async hallBoxFailed(relay: Relay, error: string): Promise<void> {
    if (relay === this.second) {
      this.second = null;
      if (!(await this.blockedByBrowser(relay))) this.emit(events.boxLost(relay.name, error));
      return;
    }
    if (relay !== this.relay) return;
    if (!this.second) return this.lostBox(error);
    if (!(await this.blockedByBrowser(relay))) this.emit(events.boxLost(relay.name, error));
    this.relay = this.second;
    this.second = null;
    this.emit(events.failedOver(this.relay.name, this.relay.url));
  }

  /**
   * In two-box mode: finds a second box if there is none, and sends it every save the journal
   * holds that fewer than two boxes acknowledged.
   */
  private async keepTwo(): Promise<void> {
    if (!this.relay || copiesWanted(this.config.hallCopies, this.config.relays ?? [], this.learnt) < 2) return;
    if (!this.second) await this.findSecond();
    for (const seq of await this.sendable()) {
      const entry = await this.journal.get(seq);
      if (!entry || entry.held === "cloud" || entry.awaitsKeys || entry.receipts.length >= 2) continue;
      const lacks = (r: Relay | null) => r !== null && !entry.receipts.some((body) => issued(r.id, body));
      if (!lacks(this.relay) && !lacks(this.second)) continue;
      const before = entry.receipts.length;
      const goOn = await this.toHall(entry);
      const after = (await this.journal.get(seq))?.receipts.length ?? 0;
      if (before === 1 && after >= 2) this.emit(events.secondCopy(seq, (this.second ?? this.relay)?.name ?? "?"));
      if (!goOn) return;
    }
  }

  /** Looks (at most every `probeEveryMs`) for a box other than the one in use, and makes it the second. */
  private async findSecond(): Promise<void> {
    const first = this.relay;
    if (!first || (this.lastSecondSearch !== null && Date.now() - this.lastSecondSearch < this.probeEveryMs)) return;
    this.lastSecondSearch = Date.now();
    for (const prospect of this.prospects()) {
      if (prospect.url === first.url) continue;
      const id = await this.tryBox(prospect);
      if (typeof id === "string" || sameBox(id, first.id)) continue;
      this.second = { ...prospect, id };
      this.noteUsed(this.second);
      this.emit(events.alsoSaving(prospect.name, prospect.url));
      return;
    }
  }

  /**
   * PUTs `entry` to `base`: to the cloud with the boxes' receipts (`Hallrelay-Receipt`), to a box
   * with its address space declared. A save the cloud refuses (400) with receipts goes again
   * without them: evidence never costs the save.
   */
  private async put(base: string, entry: Entry, toBox: boolean, alsoHeld?: string): Promise<Put> {
    const path = `/v1/exams/${entry.exam}/candidates/${entry.candidate}/autosaves/${entry.seq}${entry.final ? "?final=true" : ""}`;
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", entry.bytes as Uint8Array<ArrayBuffer>));
    const headers: Record<string, string> = {
      "content-type": "application/octet-stream",
      "content-digest": `sha-256=:${toBase64(digest)}:`,
      "hallrelay-device": this.journal.deviceId,
    };
    if (toBox && alsoHeld) headers["hallrelay-also-held"] = alsoHeld;
    const receipts = toBox ? "" : receiptsHeader(entry.receipts);
    const space = toBox ? addressSpaceOf(base) : undefined;
    const send = async (withReceipts: boolean): Promise<Put> => {
      const h = { ...headers };
      if (withReceipts && receipts) h["hallrelay-receipt"] = receipts;
      try {
        const reply = await request(join(base, path), {
          method: "PUT",
          headers: h,
          body: entry.bytes,
          token: this.config.token,
          timeoutMs: this.requestTimeoutMs,
          ...(space ? { targetAddressSpace: space } : {}),
        });
        return readPut(reply);
      } catch (error) {
        return { kind: "failed", error: (error as Error).message };
      }
    };
    const answer = await send(true);
    if (answer.kind === "stored") this.sent += 1;
    if (answer.kind === "refused" && answer.status === 400 && receipts) {
      const again = await send(false);
      if (again.kind === "stored") this.sent += 1;
      return again;
    }
    return answer;
  }

  // ---- the relay list and the newest seq ----

  /** Asks the cloud for the exam's relay list and keeps it; returns how many relays it lists, or null. */
  private async learnRelays(): Promise<number | null> {
    this.lastRelaysAsk = Date.now();
    let reply: Reply;
    try {
      reply = await request(join(this.config.cloud, `/v1/exams/${this.config.exam}/relays`), { token: this.config.token, timeoutMs: PROBE_TIMEOUT_MS });
    } catch {
      return null;
    }
    if (reply.status === 404 || reply.status === 401 || reply.status === 403) {
      // A cloud without a platform: failover uses the configured relays.
      this.relaysDue = false;
      return null;
    }
    if (reply.status < 200 || reply.status > 299) return null;
    let list: RelayList;
    try {
      list = checkRelayList(JSON.parse(new TextDecoder().decode(reply.body)));
    } catch {
      return null;
    }
    list.fetched_at = new Date().toISOString();
    this.relaysDue = false;
    this.learnt = list;
    await this.journal.putMeta("relays", list).catch(() => undefined);
    this.emit(events.relaysLearnt(list.venue, list.relays.length));
    return list.relays.length;
  }

  /** Numbers a fresh journal once somebody says where the candidate's saves stand (asked at most every `probeEveryMs`). */
  private async settleNumbering(): Promise<void> {
    if (await this.journal.isNumbered()) return;
    if (this.lastNewestAsk !== null && Date.now() - this.lastNewestAsk < this.probeEveryMs) return;
    this.lastNewestAsk = Date.now();
    const found = await this.askNewest();
    if (found === null) {
      this.emitOnce(events.waitingToContinue());
      return;
    }
    const floor = found.newest?.seq ?? 0;
    await this.journal.numberPending(floor, this.encrypt);
    if (!found.newest) {
      this.emit(events.nothingToRestore(found.from));
      return;
    }
    const { seq, final, bytes } = found.newest;
    let payload: Uint8Array | null = bytes;
    let unopened: string | null = null;
    if (looksLikeEnvelope(bytes)) {
      payload = null;
      if (!this.config.restoreCode) {
        unopened = "the newest save is encrypted: the restore code on the candidate's exam card is needed to open it";
      } else {
        try {
          const keys = await restoreKeyPair(this.config.restoreCode, this.config.exam, this.config.candidate);
          payload = await openEnvelope(bytes, keys.privateKey, ROLE_RESTORE, this.saveOf(seq, final));
        } catch (error) {
          unopened = `the restore code does not open it (${(error as Error).message}): check that the code is the one on this candidate's exam card`;
        }
      }
    }
    this.emit(events.restored(found.from, seq, final, payload, unopened));
  }

  /** The candidate's newest save: from the cloud if it answers, else the highest any box that answers holds; null if nobody could say. */
  private async askNewest(): Promise<{ from: string; newest: Newest | null } | null> {
    if (!this.boxOnly) {
      const cloud = await this.newestAt(this.config.cloud);
      if (cloud.kind === "answer") return { from: "the cloud", newest: cloud.newest };
      if (cloud.kind === "failed") this.cloudFailed(cloud.error);
    }
    let best: { from: string; newest: Newest | null } | null = null;
    for (const prospect of this.prospects()) {
      if (typeof (await this.tryBox(prospect)) === "string") continue;
      const answer = await this.newestAt(prospect.url, true);
      if (answer.kind !== "answer") continue;
      const from = prospect.name === prospect.url ? `the hall relay at ${prospect.url}` : `the hall relay ${prospect.name}`;
      if (best === null || (answer.newest?.seq ?? 0) > (best.newest?.seq ?? 0)) best = { from, newest: answer.newest };
    }
    return best;
  }

  /** `GET …/autosaves/latest` at `base`: the newest save (null for none), or why there is no answer. */
  private async newestAt(base: string, toBox = false): Promise<{ kind: "answer"; newest: Newest | null } | { kind: "failed" | "refused"; error: string }> {
    const space = toBox ? addressSpaceOf(base) : undefined;
    let reply: Reply;
    try {
      reply = await request(join(base, `/v1/exams/${this.config.exam}/candidates/${this.config.candidate}/autosaves/latest`), {
        token: this.config.token,
        timeoutMs: PROBE_TIMEOUT_MS,
        ...(space ? { targetAddressSpace: space } : {}),
      });
    } catch (error) {
      return { kind: "failed", error: (error as Error).message };
    }
    if (reply.status === 404) return { kind: "answer", newest: null };
    if (reply.status >= 500) return { kind: "failed", error: `it answered ${reply.status}` };
    if (reply.status < 200 || reply.status > 299) return { kind: "refused", error: `${reply.status}: ${message(reply)}` };
    const seq = Number(reply.headers.get("hallrelay-seq"));
    const final = reply.headers.get("hallrelay-final");
    if (!Number.isSafeInteger(seq) || seq < 1 || (final !== "true" && final !== "false")) {
      return { kind: "refused", error: "it answered without the save's seq or final flag" };
    }
    return { kind: "answer", newest: { seq, final: final === "true", bytes: reply.body } };
  }

  // ---- events ----

  private rejected(seq: number, by: string, status: number, reason: string, code?: string): void {
    if (code === CONTINUED_ELSEWHERE) {
      if (this.continuedElsewhereBy === null) {
        this.continuedElsewhereBy = by;
        this.emit(events.continuedElsewhere(by, seq));
      }
      return;
    }
    this.emitOnce(events.rejected(seq, by, status, reason, code));
  }

  private emitOnce(event: HallEvent): void {
    if (this.told.has(event.message)) return;
    this.told.add(event.message);
    this.emit(event);
  }

  private emit(event: HallEvent): void {
    try {
      this.config.onEvent?.(event);
    } catch {
      // A listener's error is the page's, not the save's.
    }
  }
}

/** The `Hallrelay-Receipt` value: each box's receipt as base64url of its JSON, comma-separated, at most four. */
export function receiptsHeader(receipts: string[]): string {
  return receipts
    .slice(0, MAX_FORWARDED_RECEIPTS)
    .map((body) => toBase64Url(utf8(body.trim())))
    .join(",");
}

function checkCloudUrl(url: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`the cloud URL ${JSON.stringify(url)} is not a URL: give https://HOST[:PORT]`);
  }
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(parsed.hostname);
  if (parsed.protocol !== "https:" && !(parsed.protocol === "http:" && loopback)) {
    throw new ConfigError(`the cloud URL ${JSON.stringify(url)} must be https:// (http:// only to this machine)`);
  }
  if (parsed.username || parsed.password) throw new ConfigError("the cloud URL must not carry a user or password: the token goes in `token`");
}

async function askPersistence(): Promise<boolean | undefined> {
  const storage = (globalThis as { navigator?: { storage?: StorageManager } }).navigator?.storage;
  if (!storage?.persist) return undefined;
  try {
    return (await storage.persisted?.()) || (await storage.persist());
  } catch {
    return undefined;
  }
}


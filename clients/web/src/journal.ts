/**
 * The candidate's journal in IndexedDB: every save is written here, and its transaction has
 * completed, before any network call; it stays until the cloud has it.
 *
 * One database (default name `hallrelay`) with three object stores:
 *
 * | store | key | holds |
 * | --- | --- | --- |
 * | `saves` | `[exam, candidate, seq]` | the bytes as they are sent (the envelope, or the plaintext of a client told not to encrypt, or of a save waiting for the exam's keys: `awaitsKeys`), the final flag, where it is held (`laptop`, `box` with the receipts, `cloud`) |
 * | `meta` | `[exam, candidate, name]` | `lastSeq` (the newest seq ever given out), `floor` (the newest seq held elsewhere when the journal started), `device` (the journal's device id), the relay list, the exam keys document, the platform keys |
 * | `pending` | `[exam, candidate, place]` | saves of a fresh journal made before anyone said where the candidate's saves stand: plaintext, no seq, sent nowhere |
 *
 * A seq is given out in its own transaction (`lastSeq` + 1, or after the cloud's newest) before
 * the save is sealed (sealing is asynchronous, and an IndexedDB transaction cannot wait for
 * it), so no seq is given out twice: not across reloads, not across tabs (IndexedDB runs
 * read-write transactions on the same store one after another), not after the browser is
 * killed. A seq whose save never got written is a gap, never a reuse. Saves are written with
 * `durability: "strict"`; the marks (cloud, box) with the default, as the Rust journal does
 * not fsync them: a lost mark only means a save is sent again, which the API makes a no-op.
 * Once the cloud has a save it is deleted, except the newest save.
 *
 * A fresh journal (a spare laptop) is *unnumbered* until the autosaver learns the candidate's
 * newest seq from the cloud or a box: its saves wait in `pending`, and `numberPending(floor)`
 * moves them, in one transaction (all or none, after a crash too), to `saves` as seqs
 * `floor + 1, floor + 2, …`, never a guessed seq. As the Rust journal (crates/client/src/journal.rs).
 */

export type Held = "laptop" | "box" | "cloud";

/** One save in the journal. */
export interface Entry {
  exam: string;
  candidate: string;
  seq: number;
  final: boolean;
  /** What is sent: the envelope, or the plaintext (a client told not to encrypt, or `awaitsKeys`). */
  bytes: Uint8Array;
  /** A save to be sealed that came before the exam's keys: sent nowhere until sealed. */
  awaitsKeys: boolean;
  held: Held;
  /** The receipt bodies of the boxes that acknowledged it, as they sent them. */
  receipts: string[];
}

const SAVES = "saves";
const META = "meta";
const PENDING = "pending";

function promised<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new Error("the journal's transaction was aborted"));
    tx.onerror = () => reject(tx.error ?? new Error("the journal's transaction failed"));
  });
}

/** The journal could not be opened, read or written. */
export class JournalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "JournalError";
  }
}

/** One candidate's journal for one exam. */
export class Journal {
  private constructor(
    private readonly db: IDBDatabase,
    readonly exam: string,
    readonly candidate: string,
  ) {}

  /** Opens (creating if need be) the database `name` of `factory` for `exam`/`candidate`. */
  static async open(factory: IDBFactory, name: string, exam: string, candidate: string): Promise<Journal> {
    const request = factory.open(name, 2);
    request.onupgradeneeded = () => {
      const db = request.result;
      if (!db.objectStoreNames.contains(SAVES)) db.createObjectStore(SAVES, { keyPath: ["exam", "candidate", "seq"] });
      if (!db.objectStoreNames.contains(META)) db.createObjectStore(META, { keyPath: ["exam", "candidate", "name"] });
      if (!db.objectStoreNames.contains(PENDING)) db.createObjectStore(PENDING, { keyPath: ["exam", "candidate", "place"] });
    };
    let db: IDBDatabase;
    try {
      db = await new Promise<IDBDatabase>((resolve, reject) => {
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
        request.onblocked = () => reject(new Error("another tab holds an older version of the journal open"));
      });
    } catch (error) {
      throw new JournalError(`cannot open the journal (IndexedDB ${JSON.stringify(name)}): ${(error as Error)?.message ?? error}`);
    }
    // Another tab upgrading the database: let it, this one reopens on its next load.
    db.onversionchange = () => db.close();
    const journal = new Journal(db, exam, candidate);
    journal.deviceId = await journal.makeDevice();
    return journal;
  }

  /** This journal's device id (`Hallrelay-Device`): random, made when the journal was created. */
  deviceId = "";

  private async makeDevice(): Promise<string> {
    const tx = this.tx([META], "readwrite", true);
    const meta = tx.objectStore(META);
    const id = new Promise<string>((resolve, reject) => {
      const get = meta.get([this.exam, this.candidate, "device"]);
      get.onerror = () => reject(get.error);
      get.onsuccess = () => {
        const kept = (get.result as { value?: string } | undefined)?.value;
        if (typeof kept === "string" && /^[A-Za-z0-9._-]{1,64}$/.test(kept)) return resolve(kept);
        const bytes = crypto.getRandomValues(new Uint8Array(16));
        const made = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
        meta.put({ exam: this.exam, candidate: this.candidate, name: "device", value: made });
        resolve(made);
      };
    });
    const [device] = await Promise.all([id, this.finish(tx, "keep the device id")]);
    return device;
  }

  private pendingRange(): IDBKeyRange {
    return IDBKeyRange.bound([this.exam, this.candidate, 0], [this.exam, this.candidate, Number.MAX_SAFE_INTEGER]);
  }

  /** Whether this journal gives out seqs: it gave one out, or it knows where the candidate's saves stand. */
  async isNumbered(): Promise<boolean> {
    return (await this.getMeta<number>("floor")) !== undefined || (await this.lastSeq()) > 0;
  }

  /** The saves waiting for a seq, oldest first: their place (1 for the first), bytes and final flag. */
  async pending(): Promise<{ place: number; bytes: Uint8Array; final: boolean }[]> {
    const tx = this.tx([PENDING], "readonly");
    return (await promised(tx.objectStore(PENDING).getAll(this.pendingRange()))) as { place: number; bytes: Uint8Array; final: boolean }[];
  }

  /** Keeps `bytes` (plaintext) as the next save of an unnumbered journal; resolves with its place once written. */
  async appendPending(bytes: Uint8Array, final: boolean): Promise<number> {
    const tx = this.tx([PENDING], "readwrite", true);
    const store = tx.objectStore(PENDING);
    const place = new Promise<number>((resolve, reject) => {
      const cursor = store.openCursor(this.pendingRange(), "prev");
      cursor.onerror = () => reject(cursor.error);
      cursor.onsuccess = () => {
        const next = (cursor.result ? (cursor.result.value as { place: number }).place : 0) + 1;
        store.put({ exam: this.exam, candidate: this.candidate, place: next, bytes, final });
        resolve(next);
      };
    });
    const [next] = await Promise.all([place, this.finish(tx, "keep a save that waits for its seq")]);
    return next;
  }

  /**
   * Numbers the waiting saves after `floor` (the newest seq held elsewhere; 0: none), in one
   * transaction: place N becomes seq `floor + N`, waiting for the keys when `awaitsKeys`. A
   * journal already numbered keeps its own floor. Resolves with the new seqs.
   */
  async numberPending(floor: number, awaitsKeys: boolean): Promise<number[]> {
    const tx = this.tx([META, SAVES, PENDING], "readwrite", true);
    const meta = tx.objectStore(META);
    const seqs: number[] = [];
    const key = (name: string) => [this.exam, this.candidate, name];
    const work = new Promise<void>((resolve, reject) => {
      const getFloor = meta.get(key("floor"));
      getFloor.onerror = () => reject(getFloor.error);
      getFloor.onsuccess = () => {
        const getLast = meta.get(key("lastSeq"));
        getLast.onerror = () => reject(getLast.error);
        getLast.onsuccess = () => {
          const kept = (getFloor.result as { value?: number } | undefined)?.value;
          const last = (getLast.result as { value?: number } | undefined)?.value ?? 0;
          const base = kept ?? (last > 0 ? last : floor);
          if (kept === undefined) meta.put({ exam: this.exam, candidate: this.candidate, name: "floor", value: base });
          const all = tx.objectStore(PENDING).getAll(this.pendingRange());
          all.onerror = () => reject(all.error);
          all.onsuccess = () => {
            let newest = Math.max(last, base);
            for (const p of all.result as { place: number; bytes: Uint8Array; final: boolean }[]) {
              const seq = base + p.place;
              const entry: Entry = { exam: this.exam, candidate: this.candidate, seq, final: p.final, bytes: p.bytes, awaitsKeys, held: "laptop", receipts: [] };
              tx.objectStore(SAVES).put(entry);
              tx.objectStore(PENDING).delete([this.exam, this.candidate, p.place]);
              seqs.push(seq);
              newest = Math.max(newest, seq);
            }
            meta.put({ exam: this.exam, candidate: this.candidate, name: "lastSeq", value: newest });
            resolve();
          };
        };
      };
    });
    await Promise.all([work, this.finish(tx, "number the saves that waited for their seq")]);
    return seqs;
  }

  close(): void {
    this.db.close();
  }

  private range(): IDBKeyRange {
    return IDBKeyRange.bound([this.exam, this.candidate, 0], [this.exam, this.candidate, Number.MAX_SAFE_INTEGER]);
  }

  private tx(stores: string[], mode: IDBTransactionMode, strict = false): IDBTransaction {
    try {
      return this.db.transaction(stores, mode, strict ? { durability: "strict" } : undefined);
    } catch (error) {
      throw new JournalError(`cannot use the journal: ${(error as Error)?.message ?? error}`);
    }
  }

  /** The newest seq ever given out for this exam and candidate (0 for none). */
  async lastSeq(): Promise<number> {
    const tx = this.tx([META, SAVES], "readonly");
    const meta = (await promised(tx.objectStore(META).get([this.exam, this.candidate, "lastSeq"]))) as { value?: number } | undefined;
    const newest = await promised(tx.objectStore(SAVES).openCursor(this.range(), "prev"));
    const inSaves = newest ? (newest.value as Entry).seq : 0;
    return Math.max(meta?.value ?? 0, inSaves);
  }

  /**
   * Gives out the next seq (after every seq given out, and after `floor`), then writes the
   * save `make` returns for it. Resolves once the save's transaction has completed: only
   * then is it journaled.
   */
  async append(floor: number, final: boolean, make: (seq: number) => Promise<{ bytes: Uint8Array; awaitsKeys: boolean }>): Promise<Entry> {
    const seq = await this.reserve(floor);
    const { bytes, awaitsKeys } = await make(seq);
    const entry: Entry = { exam: this.exam, candidate: this.candidate, seq, final, bytes, awaitsKeys, held: "laptop", receipts: [] };
    const tx = this.tx([SAVES], "readwrite", true);
    tx.objectStore(SAVES).put(entry);
    await this.finish(tx, `write save ${seq}`);
    return entry;
  }

  private async reserve(floor: number): Promise<number> {
    const tx = this.tx([META, SAVES], "readwrite", true);
    const meta = tx.objectStore(META);
    const key = [this.exam, this.candidate, "lastSeq"];
    const seq = new Promise<number>((resolve, reject) => {
      const get = meta.get(key);
      get.onerror = () => reject(get.error);
      get.onsuccess = () => {
        const last = (get.result as { value?: number } | undefined)?.value ?? 0;
        const cursor = tx.objectStore(SAVES).openCursor(this.range(), "prev");
        cursor.onerror = () => reject(cursor.error);
        cursor.onsuccess = () => {
          const inSaves = cursor.result ? (cursor.result.value as Entry).seq : 0;
          const next = Math.max(last, inSaves, floor) + 1;
          meta.put({ exam: this.exam, candidate: this.candidate, name: "lastSeq", value: next });
          resolve(next);
        };
      };
    });
    const [next] = await Promise.all([seq, this.finish(tx, "give out a seq")]);
    return next;
  }

  private async finish(tx: IDBTransaction, what: string): Promise<void> {
    try {
      await done(tx);
    } catch (error) {
      const e = error as DOMException;
      const full = e?.name === "QuotaExceededError" ? " (the browser's storage for this site is full)" : "";
      throw new JournalError(`cannot ${what} in the journal${full}: ${e?.message ?? error}`);
    }
  }

  /** Every save held, oldest first. */
  async entries(): Promise<Entry[]> {
    const tx = this.tx([SAVES], "readonly");
    return (await promised(tx.objectStore(SAVES).getAll(this.range()))) as Entry[];
  }

  async get(seq: number): Promise<Entry | undefined> {
    const tx = this.tx([SAVES], "readonly");
    return (await promised(tx.objectStore(SAVES).get([this.exam, this.candidate, seq]))) as Entry | undefined;
  }

  /** Seqs the cloud has not acknowledged, waiting ones included, oldest first. */
  async notInCloud(): Promise<number[]> {
    return (await this.entries()).filter((e) => e.held !== "cloud").map((e) => e.seq);
  }

  /** Seqs that can be sent and that no box or cloud has acknowledged, oldest first. */
  async onlyHere(): Promise<number[]> {
    return (await this.entries()).filter((e) => e.held === "laptop" && !e.awaitsKeys).map((e) => e.seq);
  }

  /** Seqs waiting for the exam's keys, oldest first. */
  async awaitingKeys(): Promise<number[]> {
    return (await this.entries()).filter((e) => e.awaitsKeys).map((e) => e.seq);
  }

  private async update(seq: number, what: string, strict: boolean, change: (entry: Entry) => void): Promise<void> {
    const tx = this.tx([SAVES], "readwrite", strict);
    const store = tx.objectStore(SAVES);
    const get = store.get([this.exam, this.candidate, seq]);
    get.onsuccess = () => {
      const entry = get.result as Entry | undefined;
      if (!entry) return;
      change(entry);
      store.put(entry);
    };
    await this.finish(tx, what);
  }

  /** The cloud holds save `seq`: mark it, and delete every save the cloud holds but the newest. */
  async markCloud(seq: number): Promise<void> {
    const tx = this.tx([SAVES], "readwrite");
    const store = tx.objectStore(SAVES);
    const cursor = store.openCursor(this.range(), "prev");
    let newest = true;
    cursor.onsuccess = () => {
      const c = cursor.result;
      if (!c) return;
      const entry = c.value as Entry;
      if (entry.seq === seq) {
        entry.held = "cloud";
        entry.awaitsKeys = false;
      }
      if (entry.held === "cloud" && !newest) {
        c.delete();
      } else if (entry.seq === seq) {
        c.update(entry);
      }
      newest = false;
      c.continue();
    };
    await this.finish(tx, `mark save ${seq} as in the cloud`);
  }

  /** A box acknowledged save `seq` with `receipt` (its body, kept as it came; one per box). */
  async markBox(seq: number, receipt: string): Promise<void> {
    await this.update(seq, `keep the receipt of save ${seq}`, false, (entry) => {
      if (entry.held === "cloud") return;
      entry.held = "box";
      const issuer = issuerOf(receipt);
      entry.receipts = entry.receipts.filter((r) => issuerOf(r) !== issuer);
      entry.receipts.push(receipt);
    });
  }

  /** Replaces the plaintext of a save that waited for the keys with its envelope. */
  async seal(seq: number, envelope: Uint8Array): Promise<void> {
    await this.update(seq, `seal save ${seq}`, true, (entry) => {
      if (!entry.awaitsKeys) return;
      entry.bytes = envelope;
      entry.awaitsKeys = false;
    });
  }

  /** A value kept beside the saves (the relay list, the exam keys), or undefined. */
  async getMeta<T>(name: string): Promise<T | undefined> {
    const tx = this.tx([META], "readonly");
    const row = (await promised(tx.objectStore(META).get([this.exam, this.candidate, name]))) as { value?: T } | undefined;
    return row?.value;
  }

  async putMeta(name: string, value: unknown): Promise<void> {
    const tx = this.tx([META], "readwrite", true);
    tx.objectStore(META).put({ exam: this.exam, candidate: this.candidate, name, value });
    await this.finish(tx, `keep ${name}`);
  }
}

/** Which box issued a receipt body: its pin (version 2) or its appliance id; the body itself otherwise. */
function issuerOf(body: string): string {
  try {
    const r = JSON.parse(body);
    return String(r.pin ?? r.appliance ?? body);
  } catch {
    return body;
  }
}

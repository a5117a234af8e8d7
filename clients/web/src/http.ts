/**
 * One way to make a request: `fetch` with a timeout, the candidate's token, and for a hall
 * relay the Local Network Access declaration (`targetAddressSpace`). Also the one reading of an
 * autosave PUT's answer (crates/protocol/src/v1/autosave.rs `Answer`) and the question whether
 * the browser refused a box because Local Network Access is not granted.
 */

/** An answer, read whole. */
export interface Reply {
  status: number;
  headers: Headers;
  body: Uint8Array;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Uint8Array;
  token?: string;
  timeoutMs: number;
  /** The hall network's address space for a box (`"local"` or `"loopback"`); none for the cloud. */
  targetAddressSpace?: "local" | "loopback";
}

/** No answer: the network, TLS (an untrusted certificate looks the same), a timeout, or the browser's refusal. */
export class RequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RequestError";
  }
}

/** `base` + `path`, with `base`'s trailing slashes dropped. */
export function join(base: string, path: string): string {
  return base.replace(/\/+$/, "") + path;
}

export async function request(url: string, options: RequestOptions): Promise<Reply> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), options.timeoutMs);
  const headers: Record<string, string> = { ...options.headers };
  if (options.token) headers["authorization"] = `Bearer ${options.token}`;
  const init: RequestInit & { targetAddressSpace?: string } = {
    method: options.method ?? "GET",
    headers,
    signal: controller.signal,
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  };
  if (options.body) init.body = options.body as BodyInit;
  if (options.targetAddressSpace) init.targetAddressSpace = options.targetAddressSpace;
  try {
    const response = await fetch(url, init);
    const body = new Uint8Array(await response.arrayBuffer());
    return { status: response.status, headers: response.headers, body };
  } catch (error) {
    if (controller.signal.aborted) throw new RequestError(`no answer within ${options.timeoutMs} ms`);
    throw new RequestError(describe(error));
  } finally {
    clearTimeout(timer);
  }
}

function describe(error: unknown): string {
  const e = error as { message?: string; cause?: { message?: string; code?: string } };
  const cause = e?.cause?.code ?? e?.cause?.message;
  return cause ? `${e.message}: ${cause}` : String(e?.message ?? error);
}

/** The `message` of a JSON error answer, else the body as text. */
export function message(reply: Reply): string {
  const text = new TextDecoder().decode(reply.body);
  try {
    const json = JSON.parse(text);
    if (typeof json?.message === "string") return json.message;
  } catch {
    // not JSON: the text itself
  }
  return text.trim();
}

/** The `error` code of a JSON error answer (`conflict`, `continued_elsewhere`, …), if it has one. */
export function errorCode(reply: Reply): string | undefined {
  try {
    const json = JSON.parse(new TextDecoder().decode(reply.body));
    return typeof json?.error === "string" ? json.error : undefined;
  } catch {
    return undefined;
  }
}

/** What the answer to an autosave PUT means for the client (the protocol's table). */
export type Put =
  | { kind: "stored"; receipt: string }
  | { kind: "refused"; status: number; reason: string; code?: string }
  | { kind: "busy"; error: string }
  | { kind: "failed"; error: string };

export function readPut(reply: Reply): Put {
  const s = reply.status;
  if (s >= 200 && s <= 299) return { kind: "stored", receipt: new TextDecoder().decode(reply.body).trim() };
  if (s === 429 || s === 503) return { kind: "busy", error: `it answered ${s}` };
  if (s === 408 || s === 425) return { kind: "failed", error: `it answered ${s}` };
  if (s >= 400 && s <= 499) {
    const code = errorCode(reply);
    return code === undefined ? { kind: "refused", status: s, reason: message(reply) } : { kind: "refused", status: s, reason: message(reply), code };
  }
  return { kind: "failed", error: `it answered ${s}` };
}

/**
 * The address space a box URL is in, as the fetch option names it: `"loopback"` for the
 * machine itself, `"local"` for a private, link-local or unique-local address and for an mDNS
 * name (`NAME.local`); nothing where the URL does not say (another name, a public address).
 * A wrong declaration fails the request (measured in Chromium 156: `"local"` to 127.0.0.1 fails
 * even with Local Network Access granted), and none is needed for an https box: the option
 * only spares the browser a guess, and the permission is what lets the request through.
 */
export function addressSpaceOf(url: string): "local" | "loopback" | undefined {
  let host: string;
  try {
    host = new URL(url).hostname.toLowerCase().replace(/^\[|\]$/g, "");
  } catch {
    return undefined;
  }
  if (host === "localhost" || host.endsWith(".localhost") || host === "::1" || /^127\./.test(host)) return "loopback";
  const v4 = host.match(/^(\d+)\.(\d+)\.(\d+)\.(\d+)$/);
  if (v4) {
    const [a, b] = [Number(v4[1]), Number(v4[2])];
    const local = a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 169 && b === 254);
    return local ? "local" : undefined;
  }
  if (host.includes(":")) {
    return /^(fc|fd|fe[89ab])/.test(host) ? "local" : undefined;
  }
  return host.endsWith(".local") ? "local" : undefined;
}

/**
 * The state of the browser's Local Network Access permission for a box in `space`
 * ("granted", "denied", "prompt"), or `undefined` where the browser has no such permission
 * (it then does not gate the request) or the query fails. Chromium 142+ names it
 * `local-network-access`; later versions split it into `local-network` and
 * `loopback-network`: the specific name is asked first.
 */
export async function localNetworkPermission(space: "local" | "loopback"): Promise<string | undefined> {
  const permissions = (globalThis as { navigator?: { permissions?: Permissions } }).navigator?.permissions;
  if (!permissions?.query) return undefined;
  const names = space === "loopback" ? ["loopback-network", "local-network-access"] : ["local-network", "local-network-access"];
  for (const name of names) {
    try {
      const status = await permissions.query({ name } as unknown as PermissionDescriptor);
      return status.state;
    } catch {
      // this browser does not know this name: try the next
    }
  }
  return undefined;
}

// Drives the built package from node for tests/web_package.rs: one Autosaver on an in-memory
// IndexedDB (fake-indexeddb), against the real box and cloud the Rust test runs. Commands come
// one JSON line at a time on stdin, answers and events go one JSON line at a time to stdout:
//   {"open": CONFIG}      opens (or reopens: the same IndexedDB, as a reloaded page) and starts
//   {"save": TEXT, "final": BOOL}   answers {"result": SaveResult}
//   {"flush": true}       answers {"flushed": N}
//   {"pending": true}     answers {"pending": [SEQ…]}
//   {"close": true}       closes the autosaver (the page goes away)
// Events go as {"event": EVENT}, a `payload` of bytes (the `restored` answers) as UTF-8 text.
// Not part of the package: the browser tests drive it in Chromium against the same box and cloud.
import "fake-indexeddb/auto";
import { createInterface } from "node:readline";

const { Autosaver } = await import(process.argv[2]);
const say = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const text = (event) => (event.payload instanceof Uint8Array ? { ...event, payload: new TextDecoder().decode(event.payload) } : event);
let autosaver = null;

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  try {
    if (command.open) {
      autosaver = await Autosaver.open({ ...command.open, onEvent: (event) => say({ event: text(event) }) });
      await autosaver.start();
      say({ opened: true });
    } else if ("save" in command) {
      say({ result: await autosaver.save(command.save, { final: command.final === true }) });
    } else if (command.flush) {
      say({ flushed: await autosaver.flush() });
    } else if (command.pending) {
      say({ pending: await autosaver.pending() });
    } else if (command.close) {
      autosaver.close();
      autosaver = null;
      say({ closed: true });
    }
  } catch (error) {
    say({ error: String(error?.message ?? error), ...(error?.code ? { code: error.code } : {}) });
  }
}

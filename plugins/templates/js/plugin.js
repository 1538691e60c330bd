// A taskhost plugin: handles batches of tasks taken from a queue.
import host from "taskhost:plugin/host@0.1.0";

// QuickJS has neither TextEncoder nor TextDecoder: these two convert
// between strings and UTF-8 bytes (payloads are bytes).
function utf8(text) {
  const out = [];
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

function fromUtf8(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    const n = b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
    let c = n === 1 ? b : b & (0xff >> (n + 1));
    for (let k = 1; k < n; k++) c = (c << 6) | (bytes[i + k] & 63);
    text += String.fromCodePoint(c);
    i += n;
  }
  return text;
}

export const handler = {
  // Answers one outcome per task, in batch order.
  handle(batch) {
    // Configuration: `--set greeting=hi` or `config = { greeting = "hi" }`.
    const greeting = host.getConfig("greeting") ?? "hello";
    return batch.map((task) => {
      host.log("info", `${greeting}: task ${task.id}, ${task.payload.length} bytes`);
      if (task.queue === "followups") return { tag: "done" };
      // A follow-up task, for whatever serves the `followups` queue.
      try {
        host.enqueue({
          queue: "followups",
          payload: utf8(`after ${task.id}: ${fromUtf8(task.payload)}`),
          uniqueKey: null,
          delayMs: null,
        });
        return { tag: "done" };
      } catch (reason) {
        host.log("warn", `cannot enqueue: ${reason}`);
        return { tag: "retry", val: null };
      }
    });
  },
};

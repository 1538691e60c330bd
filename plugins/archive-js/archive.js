// taskhost plugin that archives tasks to JSON Lines files (JavaScript version,
// built with `jco componentize --backend qjs`).
//
// Writes exactly what the Rust `archive` plugin writes (see
// plugins/archive/src/lib.rs): one file per non-empty batch named
// `<first id:020>-<last id:020>-<attempt of first task>-<16 hex random>.jsonl`,
// one JSON object per task with the fields id, queue, unique_key, attempt,
// enqueued_at_ms and payload (UTF-8 text) or payload_base64 (other bytes).
// The file is written under a hidden temporary name, synced, renamed, and the
// directory synced; on an I/O error every task of the batch is retried.
//
// Configuration: `dir`, the guest path of a preopened directory (default
// `/archive`). QuickJS has no file API, so the plugin uses wasi:filesystem
// directly; ids and times are JS numbers (exact up to 2^53).

import host from "taskhost:plugin/host@0.1.0";
import preopens from "wasi:filesystem/preopens@0.2.12";
import random from "wasi:random/random@0.2.12";

const DEFAULT_DIR = "/archive";
const NAME_ATTEMPTS = 8;

// Decodes strict UTF-8 (no overlongs, surrogates or values past U+10FFFF),
// like Rust's `str::from_utf8`; answers null for anything else.
function utf8(bytes) {
  const n = bytes.length;
  let i = 0;
  while (i < n && bytes[i] < 0x80) i++;
  // Fast path: ASCII is most payloads and costs one native call per chunk.
  let out = ascii(bytes, 0, i);
  while (i < n) {
    const b = bytes[i];
    let cp;
    let len;
    if (b < 0x80) {
      cp = b;
      len = 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
      cp = b & 0x1f;
      len = 2;
    } else if (b >= 0xe0 && b <= 0xef) {
      cp = b & 0x0f;
      len = 3;
    } else if (b >= 0xf0 && b <= 0xf4) {
      cp = b & 0x07;
      len = 4;
    } else {
      return null;
    }
    if (i + len > n) return null;
    for (let k = 1; k < len; k++) {
      const c = bytes[i + k];
      if ((c & 0xc0) !== 0x80) return null;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (
      (len === 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
      (len === 4 && (cp < 0x10000 || cp > 0x10ffff))
    ) {
      return null;
    }
    out += String.fromCodePoint(cp);
    i += len;
  }
  return out;
}

function ascii(bytes, start, end) {
  let out = "";
  for (let k = start; k < end; k += 8192) {
    out += String.fromCharCode.apply(null, bytes.subarray(k, Math.min(end, k + 8192)));
  }
  return out;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Standard, padded base64.
function base64(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const a = bytes[i];
    const b = i + 1 < bytes.length ? bytes[i + 1] : 0;
    const c = i + 2 < bytes.length ? bytes[i + 2] : 0;
    const v = (a << 16) | (b << 8) | c;
    out += B64[(v >> 18) & 63] + B64[(v >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(v >> 6) & 63] : "=";
    out += i + 2 < bytes.length ? B64[v & 63] : "=";
  }
  return out;
}

function utf8Encode(s) {
  // QuickJS has no TextEncoder. ASCII (a native regex test) skips the
  // per-code-point work below.
  if (/^[\x00-\x7f]*$/.test(s)) {
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return bytes;
  }
  const out = [];
  for (const ch of s) {
    const cp = ch.codePointAt(0);
    if (cp < 0x80) {
      out.push(cp);
    } else if (cp < 0x800) {
      out.push(0xc0 | (cp >> 6), 0x80 | (cp & 63));
    } else if (cp < 0x10000) {
      out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
    } else {
      out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
    }
  }
  return new Uint8Array(out);
}

// JSON.stringify escapes exactly what serde_json escapes for valid strings.
function record(task) {
  const key = task.uniqueKey == null ? "null" : JSON.stringify(task.uniqueKey);
  let line =
    `{"id":${task.id},"queue":${JSON.stringify(task.queue)},"unique_key":${key},` +
    `"attempt":${task.attempt},"enqueued_at_ms":${task.enqueuedAtMs}`;
  const text = utf8(task.payload);
  if (text === null) {
    line += `,"payload_base64":"${base64(task.payload)}"}\n`;
  } else {
    line += `,"payload":${JSON.stringify(text)}}\n`;
  }
  return line;
}

function pad20(n) {
  return String(n).padStart(20, "0");
}

function randomHex() {
  const bytes = random.getRandomBytes(8);
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

function errorText(e) {
  if (e && typeof e === "object" && "payload" in e) return String(e.payload);
  return String(e);
}

// The preopened directory holding guest path `dir`, and the path inside it.
function openDir(dir) {
  let best = null;
  for (const [descriptor, path] of preopens.getDirectories()) {
    const base = path.replace(/\/+$/, "");
    if (dir === path || dir === base || dir.startsWith(base + "/")) {
      if (best === null || base.length > best.base.length) best = { descriptor, base };
    }
  }
  if (best === null) throw new Error(`cannot open ${dir}: no preopened directory holds it`);
  const rest = dir.slice(best.base.length).replace(/^\/+/, "");
  if (rest === "") return best.descriptor;
  try {
    return best.descriptor.openAt({ symlinkFollow: true }, rest, { directory: true }, { read: true });
  } catch (e) {
    throw new Error(`cannot open ${dir}: ${errorText(e)}`);
  }
}

function exists(d, name) {
  try {
    d.statAt({}, name);
    return true;
  } catch (e) {
    if (errorText(e) === "no-entry") return false;
    throw new Error(`cannot inspect ${name}: ${errorText(e)}`);
  }
}

// The first task's id and attempt in a temporary file's name
// (`.<first>-<last>-<attempt>-<random>.jsonl.tmp`), or null.
function parseTempName(name) {
  const m = /^\.(\d+)-(\d+)-(\d+)-([0-9a-f]{16})\.jsonl\.tmp$/.exec(name);
  return m === null ? null : { first: Number(m[1]), attempt: Number(m[3]) };
}

// Removes the temporary files that earlier, unfinished attempts of this
// batch's tasks left (a kill or a time limit mid-write). Best effort.
function removeOrphans(dir, d, batch) {
  const attempts = new Map(batch.map((t) => [t.id, t.attempt]));
  let entries;
  try {
    entries = d.readDirectory();
  } catch (_) {
    return;
  }
  for (;;) {
    let entry;
    try {
      entry = entries.readDirectoryEntry();
    } catch (_) {
      return;
    }
    if (entry === undefined || entry === null) return;
    const parsed = parseTempName(entry.name);
    if (parsed === null) continue;
    const now = attempts.get(parsed.first);
    if (now !== undefined && parsed.attempt < now) {
      try {
        d.unlinkFileAt(entry.name);
        host.log("info", `archive: removed ${dir}/${entry.name} left by an unfinished attempt`);
      } catch (e) {
        host.log("warn", `archive: cannot remove ${dir}/${entry.name}: ${errorText(e)}`);
      }
    }
  }
}

// Writes the batch to one new file in `dir`; answers its name.
function writeBatch(dir, d, batch) {
  const body = utf8Encode(batch.map(record).join(""));
  const first = batch[0];
  const last = batch[batch.length - 1];
  for (let attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
    const name = `${pad20(first.id)}-${pad20(last.id)}-${first.attempt}-${randomHex()}.jsonl`;
    const tmp = `.${name}.tmp`;
    if (exists(d, name)) continue;
    let file;
    try {
      file = d.openAt({}, tmp, { create: true, exclusive: true }, { write: true });
    } catch (e) {
      if (errorText(e) === "exist") continue;
      throw new Error(`cannot create ${dir}/${tmp}: ${errorText(e)}`);
    }
    try {
      let offset = 0;
      while (offset < body.length) {
        offset += Number(file.write(body.subarray(offset), offset));
      }
      file.sync();
      d.renameAt(tmp, d, name);
    } catch (e) {
      try {
        d.unlinkFileAt(tmp);
      } catch (_) {
        // best effort: the original error is what matters
      }
      throw new Error(`cannot write ${dir}/${tmp}: ${errorText(e)}`);
    }
    return `${dir}/${name}`;
  }
  throw new Error(`cannot find a free file name in ${dir}`);
}

export const handler = {
  handle(batch) {
    if (batch.length === 0) return [];
    const dir = host.getConfig("dir") || DEFAULT_DIR;
    let outcome;
    try {
      const d = openDir(dir);
      if (batch.some((t) => t.attempt > 1)) removeOrphans(dir, d, batch);
      const path = writeBatch(dir, d, batch);
      // The rename is durable once the directory is synced; if that is not
      // allowed, retrying would only archive the batch twice.
      try {
        d.sync();
      } catch (e) {
        host.log("warn", `archive: cannot sync directory ${dir}: ${errorText(e)}`);
      }
      host.log("debug", `archive: wrote ${batch.length} task(s) to ${path}`);
      outcome = { tag: "done" };
    } catch (e) {
      host.log("error", `archive: ${e.message ?? errorText(e)}`);
      outcome = { tag: "retry", val: null };
    }
    return batch.map(() => outcome);
  },
};

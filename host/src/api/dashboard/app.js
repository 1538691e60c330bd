// The taskhost dashboard: plain JavaScript over the HTTP API (/v1/...), no
// build step. Every value shown comes from the API; task payloads and
// reasons are untrusted text and are only ever set as textContent.
"use strict";

const POLL_MS = 1500;
const PAGE = 50;
const QUEUES_PER_PAGE = 100;
// Dead letters: queues per page, and dead letters shown per queue.
const DEAD_QUEUES_PER_PAGE = 10;
const DEAD_PER_QUEUE = 100;
const HISTORY = 60;

// ---- helpers -------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Paging by cursor on the server: `cursor` starts this page (null: the
// first), `next` the following one (null: none), `before` holds the cursors
// of the pages before this one; `refresh` shows the page at `cursor`.
function pages(refresh) {
  const pg = {
    cursor: null,
    next: null,
    before: [],
    reset() {
      pg.cursor = null;
      pg.before.length = 0;
    },
    // The Previous and Next buttons, labelled `back` and `forward`.
    buttons(back, forward) {
      const previous = () => pg.before.length && ((pg.cursor = pg.before.pop()), refresh());
      const following = () => pg.next !== null && (pg.before.push(pg.cursor), (pg.cursor = pg.next), refresh());
      return [
        h("button", { "data-action": "previous", onclick: previous }, back),
        h("button", { "data-action": "next", onclick: following }, forward),
      ];
    },
  };
  return pg;
}

// A table: a head cell per column, `[label]` or `[label, class]`, then
// `rest` (its body).
function table(attrs, columns, ...rest) {
  const head = columns.map(([label, cls]) => h("th", cls ? { class: cls } : {}, label));
  return h("table", attrs, h("thead", {}, h("tr", {}, ...head)), ...rest);
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function status(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "error" : "";
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function when(ms) {
  if (!ms) return "–";
  return new Date(Number(ms)).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// Text when the bytes are UTF-8, else hex: what `host peek` shows.
function preview(task) {
  if (typeof task.payload === "string") return task.payload;
  const b64 = task.payload_base64;
  if (typeof b64 !== "string") return "";
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (_) {
    return Array.from(bytes.slice(0, 64), (b) => b.toString(16).padStart(2, "0")).join(" ");
  }
}

// ---- API -----------------------------------------------------------------

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem("taskhost-token");
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) {
    await login();
    return api(method, path, body);
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!res.ok) throw new Error((json && json.error) || `${method} ${path}: HTTP ${res.status}`);
  return json;
}

function login() {
  const dialog = document.getElementById("login");
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        sessionStorage.setItem("taskhost-token", document.getElementById("token").value);
        resolve();
      },
      { once: true },
    );
    dialog.showModal();
  });
}

function confirmed(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

// Runs an action, reports it, then refreshes the current view.
async function act(what, fn) {
  try {
    const r = await fn();
    status(`${what}: done`);
    view && view.refresh && view.refresh();
    return r;
  } catch (e) {
    status(`${what}: ${e.message}`, true);
  }
}

const q = (name) => encodeURIComponent(name);
const listOf = (json, key) => (Array.isArray(json) ? json : (json && json[key]) || []);
// `GET /v1/queues` names each queue `queue`.
const queuesOf = (json) => listOf(json, "queues").map((x) => ({ ...x, name: x.name ?? x.queue }));
const sum = (xs, key) => xs.reduce((n, x) => n + (Number(x[key]) || 0), 0);

// ---- views ---------------------------------------------------------------

let view = null;

// Polls `load` every POLL_MS while the view is shown.
function polling(load) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      await load();
      status(`updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      status(e.message, true);
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return {
    refresh: () => {
      clearTimeout(timer);
      tick();
    },
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

// Per-queue counters seen by this page, for the rate charts.
const history = new Map();

function rates(queue, nowMs) {
  const done = queue.done_total ?? null;
  const failed = queue.failed_total ?? null;
  let h0 = history.get(queue.name);
  if (!h0) {
    h0 = { last: null, points: [] };
    history.set(queue.name, h0);
  }
  // Without counters, work done is what left the queue: a fall in its size.
  const size = queue.pending + queue.delayed + queue.leased;
  const sample = { t: nowMs, done, failed, size };
  if (h0.last) {
    const dt = Math.max((nowMs - h0.last.t) / 1000, 0.001);
    const d = done !== null && h0.last.done !== null ? done - h0.last.done : Math.max(h0.last.size - size, 0);
    const f = failed !== null && h0.last.failed !== null ? failed - h0.last.failed : 0;
    h0.points.push({ done: Math.max(d, 0) / dt, failed: Math.max(f, 0) / dt });
    if (h0.points.length > HISTORY) h0.points.shift();
  }
  h0.last = sample;
  return h0.points;
}

function sparkline(points) {
  const s = svg("svg", { class: "spark", viewBox: `0 0 ${HISTORY} 28`, role: "img" });
  const max = Math.max(1, ...points.map((p) => Math.max(p.done, p.failed)));
  for (const key of ["done", "failed"]) {
    const coords = points.map((p, i) => `${i},${(27 - (p[key] / max) * 26).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { class: key, points: coords || "0,27" }));
  }
  const last = points[points.length - 1] || { done: 0, failed: 0 };
  s.setAttribute("aria-label", `${last.done.toFixed(1)} done/s, ${last.failed.toFixed(1)} failed/s`);
  s.dataset.points = String(points.length);
  return s;
}

function overview(main) {
  // Paged by name on the server: a cursor is the last name of the page before.
  const pg = pages(() => p.refresh());
  let filter = "";
  const body = h("tbody", { id: "queues" });
  const pager = h("span", { class: "muted" });
  const search = h("input", {
    type: "search",
    placeholder: "filter queues",
    "aria-label": "Filter queues",
    oninput: (e) => {
      filter = e.target.value;
      pg.reset();
      p.refresh();
    },
  });
  main.append(
    h("h1", {}, "Queues"),
    h(
      "div",
      { class: "toolbar" },
      search,
      ...pg.buttons("Previous", "Next"),
      pager,
    ),
    table(
      {},
      [
        ["Queue"], ["Pending", "num"], ["Delayed", "num"], ["Leased", "num"], ["Dead", "num"],
        ["Oldest pending", "num wide"], ["Done/s", "num"], ["Failed/s", "num wide"], ["Last minute", "wide"],
        ["State"],
      ],
      body,
    ),
  );
  const p = polling(async () => {
    const params = new URLSearchParams({ limit: String(QUEUES_PER_PAGE) });
    if (pg.cursor !== null) params.set("after", pg.cursor);
    if (filter) params.set("filter", filter);
    const json = await api("GET", `/v1/queues?${params}`);
    const shown = queuesOf(json);
    pg.next = json.next_after ?? null;
    const now = Date.now();
    const points = new Map(shown.map((x) => [x.name, rates(x, now)]));
    const total = Number(json.total ?? shown.length);
    const pageCount = Math.max(1, Math.ceil(total / QUEUES_PER_PAGE));
    pager.textContent = `${total} queues, page ${pg.before.length + 1} of ${pageCount}`;
    const rows = shown.map((x) => {
      const pts = points.get(x.name);
      const last = pts[pts.length - 1] || { done: 0, failed: 0 };
      const paused = !!x.paused;
      return h(
        "tr",
        { "data-queue": x.name },
        h("td", {}, h("a", { href: `#/queue/${q(x.name)}/pending` }, x.name)),
        h("td", { class: "num", "data-col": "pending" }, x.pending),
        h("td", { class: "num", "data-col": "delayed" }, x.delayed),
        h("td", { class: "num", "data-col": "leased" }, x.leased),
        h("td", { class: "num", "data-col": "dead" }, h("a", { href: `#/queue/${q(x.name)}/dead` }, x.dead)),
        h("td", { class: "num wide" }, age(x.oldest_pending_age_seconds)),
        h("td", { class: "num", "data-col": "done-rate" }, last.done.toFixed(1)),
        h("td", { class: "num wide" }, last.failed.toFixed(1)),
        h("td", { class: "wide" }, sparkline(pts)),
        h(
          "td",
          {},
          paused ? h("span", { class: "badge" }, "paused") : null,
          " ",
          h(
            "button",
            {
              "data-action": paused ? "resume" : "pause",
              onclick: () =>
                act(`${paused ? "resume" : "pause"} ${x.name}`, () =>
                  api("POST", `/v1/queues/${q(x.name)}/${paused ? "resume" : "pause"}`),
                ),
            },
            paused ? "Resume" : "Pause",
          ),
        ),
      );
    });
    body.replaceChildren(...rows);
  });
  return p;
}

const STATES = ["pending", "delayed", "leased", "dead"];

function queuePage(main, name, state) {
  let cursor = null;
  const cursors = [];
  const body = h("tbody", { id: "tasks" });
  const info = h("span", { class: "muted" });
  const tabs = h(
    "div",
    { class: "tabs", role: "tablist" },
    STATES.map((s) =>
      h(
        "button",
        {
          role: "tab",
          "aria-selected": String(s === state),
          onclick: () => (location.hash = `#/queue/${q(name)}/${s}`),
        },
        s,
      ),
    ),
  );
  const dead = state === "dead";
  main.append(
    h("h1", {}, `Queue ${name}: ${state}`),
    tabs,
    h(
      "div",
      { class: "toolbar" },
      h("button", { onclick: () => ((cursor = cursors.pop() ?? null), p.refresh()) }, "Previous page"),
      h(
        "button",
        {
          onclick: () => {
            const last = body.lastElementChild;
            if (last && last.dataset.id) {
              cursors.push(cursor);
              cursor = last.dataset.id;
              p.refresh();
            }
          },
        },
        "Next page",
      ),
      info,
    ),
    table(
      {},
      [
        ["Id", "num"], ["Unique key", "wide"], ["Attempt", "num"], ["Enqueued", "wide"],
        [dead ? "Reason" : "Payload"], [""],
      ],
      body,
    ),
  );
  const p = polling(async () => {
    const params = new URLSearchParams({ state, limit: String(PAGE) });
    if (cursor !== null) params.set("after", cursor);
    const tasks = listOf(await api("GET", `/v1/queues/${q(name)}/tasks?${params}`), "tasks");
    info.textContent = `${tasks.length} shown`;
    body.replaceChildren(
      ...tasks.map((t) =>
        h(
          "tr",
          { "data-id": t.id },
          h("td", { class: "num" }, t.id),
          h("td", { class: "wide" }, t.unique_key ?? ""),
          h("td", { class: "num" }, t.attempt),
          h("td", { class: "wide" }, when(t.enqueued_at_ms)),
          dead
            ? h("td", { class: "reason" }, t.reason ?? "")
            : h("td", { class: "payload", title: preview(t) }, preview(t)),
          h("td", {}, taskActions(name, state, t)),
        ),
      ),
    );
  });
  return p;
}

function taskActions(name, state, t) {
  const out = [];
  if (state === "pending" || state === "delayed") {
    out.push(
      h(
        "button",
        {
          class: "danger",
          "data-action": "cancel",
          onclick: () => act(`cancel task ${t.id}`, () => api("DELETE", `/v1/queues/${q(name)}/tasks/${t.id}`)),
        },
        "Cancel",
      ),
    );
  }
  if (state === "delayed") {
    out.push(
      " ",
      h(
        "button",
        {
          "data-action": "run-now",
          onclick: () => act(`run task ${t.id} now`, () => api("POST", `/v1/queues/${q(name)}/tasks/${t.id}/run`)),
        },
        "Run now",
      ),
    );
  }
  if (state === "dead") {
    out.push(
      h(
        "button",
        {
          "data-action": "retry",
          onclick: () => act(`retry task ${t.id}`, () => api("POST", `/v1/queues/${q(name)}/dead/retry`, { ids: [t.id] })),
        },
        "Retry",
      ),
      " ",
      h(
        "button",
        {
          class: "danger",
          "data-action": "delete",
          onclick: () => act(`delete task ${t.id}`, () => api("DELETE", `/v1/queues/${q(name)}/dead`, { ids: [t.id] })),
        },
        "Delete",
      ),
    );
  }
  return out;
}

// The first line of a reason, and the plugin version it names, group dead letters.
function groupKey(t) {
  const reason = String(t.reason ?? "");
  const first = reason.split("\n")[0].slice(0, 200);
  const m = /version ([0-9a-f]{6,})/.exec(reason);
  return { cause: first, version: m ? m[1] : "" };
}

function deadLetters(main) {
  const list = h("div", { id: "groups" });
  const pg = pages(() => p.refresh());
  const pager = h("span", { class: "muted" });
  main.append(
    h("h1", {}, "Dead letters"),
    h(
      "p",
      { class: "muted" },
      `The first ${DEAD_PER_QUEUE} dead letters of each queue (the queue's dead tab pages through all), ` +
        `grouped by cause and plugin version; ${DEAD_QUEUES_PER_PAGE} queues per page.`,
    ),
    h(
      "div",
      { class: "toolbar" },
      ...pg.buttons("Previous queues", "Next queues"),
      pager,
    ),
    list,
  );
  let groups = new Map();
  const p = polling(async () => {
    const qp = new URLSearchParams({ has_dead: "true", limit: String(DEAD_QUEUES_PER_PAGE) });
    if (pg.cursor !== null) qp.set("after", pg.cursor);
    const json = await api("GET", `/v1/queues?${qp}`);
    const queues = queuesOf(json);
    pg.next = json.next_after ?? null;
    pager.textContent = `page ${pg.before.length + 1}${pg.next === null ? " (last)" : ""}`;
    groups = new Map();
    for (const x of queues) {
      const params = new URLSearchParams({ state: "dead", limit: String(DEAD_PER_QUEUE) });
      const tasks = listOf(await api("GET", `/v1/queues/${q(x.name)}/tasks?${params}`), "tasks");
      for (const t of tasks) {
        const k = groupKey(t);
        const id = `${x.name}\u0000${k.version}\u0000${k.cause}`;
        if (!groups.has(id)) groups.set(id, { queue: x.name, total: x.dead, ...k, tasks: [] });
        groups.get(id).tasks.push(t);
      }
    }
    const blocks = [];
    const byQueue = new Map();
    for (const g of groups.values()) {
      if (!byQueue.has(g.queue)) byQueue.set(g.queue, []);
      byQueue.get(g.queue).push(g);
    }
    for (const [queue, gs] of byQueue) {
      const total = gs[0].total;
      blocks.push(
        h(
          "section",
          { class: "group", "data-queue": queue },
          h(
            "div",
            { class: "toolbar" },
            h("strong", {}, `${queue}: ${total} dead`),
            h(
              "button",
              {
                "data-action": "retry-all",
                onclick: async () => {
                  if (await confirmed(`Retry all ${total} dead letters of ${queue}?`))
                    act(`retry all of ${queue}`, () => api("POST", `/v1/queues/${q(queue)}/dead/retry`, {}));
                },
              },
              "Retry all",
            ),
            h(
              "button",
              {
                class: "danger",
                "data-action": "delete-all",
                onclick: async () => {
                  if (await confirmed(`Delete all ${total} dead letters of ${queue}? This cannot be undone.`))
                    act(`delete all of ${queue}`, () => api("DELETE", `/v1/queues/${q(queue)}/dead`));
                },
              },
              "Delete all",
            ),
          ),
          gs.map((g) => deadGroup(queue, g)),
        ),
      );
    }
    list.replaceChildren(...(blocks.length ? blocks : [h("p", {}, "No dead letters.")]));
  });
  return p;
}

// Groups the operator opened stay open across refreshes.
const openGroups = new Set();

function deadGroup(queue, g) {
  const ids = g.tasks.map((t) => t.id);
  const key = `${queue}\u0000${g.version}\u0000${g.cause}`;
  return h(
    "details",
    {
      class: "dead-group",
      open: openGroups.has(key),
      ontoggle: (e) => (e.target.open ? openGroups.add(key) : openGroups.delete(key)),
    },
    h(
      "summary",
      {},
      `${g.tasks.length} × `,
      h("span", { class: "reason" }, g.cause || "(no reason)"),
      g.version ? h("span", { class: "muted" }, ` version ${g.version}`) : null,
      " ",
      h(
        "button",
        {
          "data-action": "retry-group",
          onclick: (e) => {
            e.preventDefault();
            act(`retry ${ids.length} of ${queue}`, () => api("POST", `/v1/queues/${q(queue)}/dead/retry`, { ids }));
          },
        },
        "Retry group",
      ),
      " ",
      h(
        "button",
        {
          class: "danger",
          "data-action": "delete-group",
          onclick: async (e) => {
            e.preventDefault();
            if (await confirmed(`Delete ${ids.length} dead letters of ${queue}?`))
              act(`delete ${ids.length} of ${queue}`, () => api("DELETE", `/v1/queues/${q(queue)}/dead`, { ids }));
          },
        },
        "Delete group",
      ),
    ),
    h(
      "table",
      {},
      h(
        "tbody",
        {},
        g.tasks.map((t) =>
          h(
            "tr",
            { "data-id": t.id },
            h("td", { class: "num" }, t.id),
            h("td", { class: "num" }, `attempt ${t.attempt}`),
            h("td", { class: "wide" }, when(t.failed_at_ms)),
            h("td", { class: "payload", title: preview(t) }, preview(t)),
            h("td", {}, taskActions(queue, "dead", t)),
          ),
        ),
      ),
    ),
  );
}

function hosts(main) {
  const body = h("tbody", { id: "hosts" });
  main.append(
    h("h1", {}, "Hosts"),
    h(
      "div",
      { class: "toolbar" },
      h(
        "button",
        { "data-action": "reload", onclick: () => act("reload plugins", () => api("POST", "/v1/hosts/reload")) },
        "Reload plugins on every host",
      ),
    ),
    table(
      {},
      [
        ["Host"], ["Machine", "wide"], ["Pid", "num"], ["Started", "wide"], ["Plugins"],
        ["Busy / max workers", "num"], ["Last heartbeat", "num"],
      ],
      body,
    ),
  );
  return polling(async () => {
    const all = listOf(await api("GET", "/v1/hosts"), "hosts");
    const now = Date.now();
    body.replaceChildren(
      ...all.map((x) =>
        h(
          "tr",
          { "data-host": x.id },
          h("td", {}, x.id),
          h("td", { class: "wide" }, x.machine ?? ""),
          h("td", { class: "num" }, x.pid ?? ""),
          h("td", { class: "wide" }, when(x.started_at_ms)),
          h(
            "td",
            {},
            (x.plugins || []).map((pl) => h("div", {}, `${pl.name} ${pl.version} on ${pl.queue}`)),
          ),
          h("td", { class: "num" }, `${sum(x.plugins || [], "busy_workers")} / ${sum(x.plugins || [], "max_workers")}`),
          h("td", { class: "num" }, age((now - Number(x.last_heartbeat_ms ?? now)) / 1000)),
        ),
      ),
    );
  });
}

const secs = (x) => (x === null || x === undefined ? "–" : x < 1 ? `${(x * 1000).toFixed(1)} ms` : `${x.toFixed(2)} s`);
const CAUSES = ["trap", "time_limit", "memory_limit", "error"];

// One plugin: totals, its version history (loaded, swapped, refused with
// the reason), and per version its batches by result and p50/p99 duration.
function pluginSection(pl) {
  const handler = pl.kind !== "source";
  const calls = handler ? "Batches" : "Polls";
  return h(
    "section",
    { class: "group", "data-plugin": pl.name, "aria-label": `plugin ${pl.name}` },
    h("h2", {}, `${pl.name} (${pl.kind ?? "handler"}) on ${pl.queue}: version ${pl.version}`),
    handler
      ? h(
          "p",
          {},
          `${pl.done} done, ${pl.retried} retried, ${pl.dead} dead-lettered, ${pl.released ?? 0} released; ` +
            `workers ${pl.busy_workers} / ${pl.max_workers}`,
        )
      : null,
    pl.last_refused ? h("p", {}, "Last refused version: ", h("span", { class: "reason" }, pl.last_refused)) : null,
    h("h3", {}, "Versions"),
    table(
      { class: "versions" },
      [
        ["Version"], [calls, "num"], ["Ok", "num"], ["Failed", "num"], ["Failed by cause", "wide"],
        ["p50", "num"], ["p99", "num"],
      ],
      h(
        "tbody",
        {},
        (pl.versions || []).map((v) =>
          h(
            "tr",
            { "data-version": v.version },
            h("td", {}, v.version, v.version === pl.version ? " (live)" : ""),
            h("td", { class: "num" }, v.batches),
            h("td", { class: "num", "data-col": "ok" }, v.ok ?? ""),
            h("td", { class: "num", "data-col": "failed" }, v.failed ?? ""),
            h(
              "td",
              { class: "wide" },
              CAUSES.filter((c) => v.results && v.results[c] > 0)
                .map((c) => `${c} ${v.results[c]}`)
                .join(", ") || "–",
            ),
            h("td", { class: "num", "data-col": "p50" }, secs(v.p50_seconds)),
            h("td", { class: "num", "data-col": "p99" }, secs(v.p99_seconds)),
          ),
        ),
      ),
    ),
    h("h3", {}, "History (this host, newest first)"),
    table(
      { class: "history" },
      [["When"], ["Event"], ["Version"], ["Detail"]],
      h(
        "tbody",
        {},
        (pl.history || [])
          .slice()
          .reverse()
          .map((e) =>
            h(
              "tr",
              { "data-event": e.kind },
              h("td", {}, when(e.at_ms)),
              h("td", {}, e.kind === "refused" ? h("span", { class: "error" }, "refused") : e.kind),
              h("td", {}, e.version),
              h(
                "td",
                { class: "reason" },
                e.kind === "swapped" ? `from ${e.from}` : e.kind === "refused" ? e.reason ?? "" : "",
              ),
            ),
          ),
      ),
    ),
  );
}

function plugins(main) {
  const list = h("div", { id: "plugins" });
  main.append(h("h1", {}, "Plugins on this host"), list);
  return polling(async () => {
    const all = listOf(await api("GET", "/v1/plugins"), "plugins");
    list.replaceChildren(...(all.length ? all.map(pluginSection) : [h("p", {}, "This host runs no plugins.")]));
  });
}

// ---- routing -------------------------------------------------------------

function route() {
  if (view) view.stop();
  const main = document.getElementById("main");
  main.replaceChildren();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const section = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.nav === section || (section === "queue" && a.dataset.nav === "overview")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (section === "queue" && parts[1]) {
    view = queuePage(main, parts[1], STATES.includes(parts[2]) ? parts[2] : "pending");
  } else if (section === "dead") {
    view = deadLetters(main);
  } else if (section === "hosts") {
    view = hosts(main);
  } else if (section === "plugins") {
    view = plugins(main);
  } else {
    view = overview(main);
  }
}

window.addEventListener("hashchange", route);
route();

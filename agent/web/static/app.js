// The diagnostic page's one script: renders the figures embedded in the page, then keeps them
// fresh by polling /api. Values are written with textContent only, never as HTML, so nothing a
// device or a config file says can become markup. No framework, no build step, no CDN.
"use strict";

(() => {
  const body = document.body;
  const PAGE = body.dataset.page;
  const LANG = body.dataset.lang || "zh-CN";
  const ROLE = body.dataset.role || "viewer";
  const REFRESH_MS = Number(body.dataset.refreshMs) || 2000;
  const DEVICE = body.dataset.device || "";
  const GATEWAY = body.dataset.gateway || "";
  const CAT = JSON.parse(document.getElementById("i18n").textContent);
  const BOOT = JSON.parse(document.getElementById("boot").textContent);
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const EMPTY = "–";

  // ------------------------------------------------------------------ text and formats

  // A driver describes its commands in English; the catalogs translate the known ones.
  function commandText(c) {
    const key = `command.${c.action}`;
    return Object.prototype.hasOwnProperty.call(CAT, key) ? CAT[key] : c.description;
  }

  function T(key, params) {
    let text = Object.prototype.hasOwnProperty.call(CAT, key) ? CAT[key] : key;
    if (params) {
      text = text.replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m));
    }
    return text;
  }

  // Times are shown in the gateway's timezone, not the laptop's: the technician compares them
  // with the gateway's own logs.
  let tz = body.dataset.tz || "UTC";
  let fullTime;
  let clockTime;
  // ISO 8601 (2026-12-05 02:04:44) in the gateway's timezone, in every language: built from the
  // formatter's parts, so no locale's order (US month first) or separators leak in.
  function formatters(zone) {
    return [
      new Intl.DateTimeFormat("en-GB", {
        timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
      }),
      new Intl.DateTimeFormat("en-GB", { timeZone: zone, hour: "2-digit", minute: "2-digit", hourCycle: "h23" }),
    ];
  }
  try {
    [fullTime, clockTime] = formatters(tz);
  } catch (e) {
    tz = "UTC";
    [fullTime, clockTime] = formatters("UTC");
  }
  const numberFormat = new Intl.NumberFormat(LANG);
  let serverNow = Date.now();

  function fmtNum(v) { return typeof v === "number" ? numberFormat.format(v) : EMPTY; }
  function fmtTime(ms) {
    if (typeof ms !== "number") return EMPTY;
    const p = {};
    for (const { type, value } of fullTime.formatToParts(new Date(ms))) p[type] = value;
    return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
  }
  function fmtDuration(s) {
    if (typeof s !== "number") return EMPTY;
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d) return T("dur.dh", { d, h });
    if (h) return T("dur.hm", { h, m });
    if (m) return T("dur.ms", { m, s: sec });
    return T("dur.s", { s: sec });
  }
  function fmtAgo(ms) {
    if (typeof ms !== "number") return EMPTY;
    const s = (serverNow - ms) / 1000;
    return s < 1 ? T("ago.now") : T("ago.past", { d: fmtDuration(s) });
  }
  function fmtBytes(n) {
    if (typeof n !== "number") return EMPTY;
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  function fmtValue(v, unit) {
    if (v === null || v === undefined) return EMPTY;
    let text;
    if (typeof v === "boolean") text = v ? T("value.true") : T("value.false");
    else if (typeof v === "number") text = numberFormat.format(v);
    else text = String(v);
    return unit ? `${text} ${unit}` : text;
  }
  function fmtLocation(loc) {
    if (!loc) return EMPTY;
    const parts = [];
    if (loc.building) parts.push(T("loc.building", { v: loc.building }));
    if (loc.unit) parts.push(T("loc.unit", { v: loc.unit }));
    if (loc.floor !== undefined && loc.floor !== null) parts.push(T("loc.floor", { v: loc.floor }));
    if (loc.room) parts.push(T("loc.room", { v: loc.room }));
    return parts.join(" ") || EMPTY;
  }
  function fmtErrors(errors) {
    const keys = Object.keys(errors || {});
    if (!keys.length) return EMPTY;
    return keys.sort().map((k) => `${k}: ${numberFormat.format(errors[k])}`).join(", ");
  }

  const FORMATS = {
    num: fmtNum,
    time: fmtTime,
    ago: fmtAgo,
    duration: fmtDuration,
    // Beside a value that may be absent ("last error" and when): nothing rather than a dash.
    since: (ms) => (typeof ms === "number" ? `(${fmtAgo(ms)})` : ""),
    age: (s) => (typeof s === "number" ? fmtDuration(s) : T("buffer.empty")),
    bytes: fmtBytes,
    ms: (v) => (typeof v === "number" ? `${numberFormat.format(v)} ms` : EMPTY),
    seconds: (v) => (typeof v === "number" ? T("unit.seconds", { n: numberFormat.format(v) }) : EMPTY),
    rate: (v) => (typeof v === "number" ? T("unit.per_s", { n: numberFormat.format(v) }) : EMPTY),
    synced: (v) => (v ? T("clock.synced") : T("clock.unsynced")),
    health: (v) => T(`health.${v}`),
    kind: (v) => T(`kind.${v}`),
    location: fmtLocation,
    errors: fmtErrors,
  };

  function pick(obj, path) {
    return path.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);
  }

  // Fill every [data-f] element under root from data; data-value keeps the raw figure so tests
  // and people with devtools can compare the page with /api.
  function fill(root, data) {
    for (const el of root.querySelectorAll("[data-f]")) {
      const value = pick(data, el.dataset.f);
      const format = FORMATS[el.dataset.fmt];
      const text = format ? format(value) : (value === null || value === undefined || value === "" ? EMPTY : String(value));
      if (el.textContent !== text) el.textContent = text;
      el.dataset.value = value === undefined ? "" : JSON.stringify(value);
      // An empty field is a muted dash, never a red one (CSS: [data-empty]).
      if (text === EMPTY) el.dataset.empty = ""; else delete el.dataset.empty;
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function healthBadge(health) {
    return el("span", { class: `badge health-${health}`, text: T(`health.${health}`) });
  }

  function deviceLink(id) {
    // The agent's own events carry the gateway id as their device: they belong to the overview.
    if (id === GATEWAY) return el("a", { href: "/", text: id });
    return el("a", { href: `/devices/${encodeURIComponent(id)}`, text: id });
  }

  function details(data) {
    if (!data) return "";
    return Object.entries(data)
      .map(([k, v]) => `${k}=${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`)
      .join(" ");
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // ------------------------------------------------------------------ fetching

  const banner = document.getElementById("banner");
  const updated = document.getElementById("updated");

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers);
    if (opts.method && opts.method !== "GET") opts.headers["X-CSRF-Token"] = CSRF;
    const response = await fetch(path, opts);
    if (response.status === 401) {
      window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
      throw new Error("login required");
    }
    const data = await response.json();
    if (!response.ok && !("ok" in data) && !("status" in data)) {
      throw Object.assign(new Error(data.message || data.error || response.statusText), { data, status: response.status });
    }
    return data;
  }

  function live(path, render, every) {
    let busy = false;
    async function tick() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        // A timed refresh is not the user's action: it keeps no session alive.
        const data = await api(typeof path === "function" ? path() : path, { headers: { "X-Edge-Refresh": "1" } });
        render(data);
        if (banner) banner.hidden = true;
      } catch (e) {
        if (banner) banner.hidden = false;
      } finally {
        busy = false;
      }
    }
    setInterval(tick, every || REFRESH_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    return tick;
  }

  function stamp(data) {
    if (data && typeof data.now_ms === "number") {
      serverNow = data.now_ms;
      if (updated) {
        updated.textContent = fmtTime(data.now_ms);
        updated.dataset.value = String(data.now_ms);
      }
    }
  }

  // ------------------------------------------------------------------ overview

  function renderOverview(data) {
    stamp(data);
    const main = document.getElementById("main");
    fill(main, data);
    const up = data.uplink;
    const state = document.getElementById("uplink-state");
    // connected, sending (since when), stalled (no answer within the bound), disconnected.
    const tone = { none: "muted", connected: "good", sending: "good", stalled: "bad", disconnected: "bad" };
    let text = T(`uplink.${up.state}`);
    if (up.state === "sending" || up.state === "stalled") text += ` · ${T("uplink.sending_since", { ago: fmtAgo(up.sending_since_ms) })}`;
    state.className = `state ${tone[up.state] || "muted"}`;
    state.textContent = text;
    state.dataset.value = up.state;
    const error = document.getElementById("uplink-error");
    const reason = up.last_error_reason;
    const said = reason ? T(`uplink.reason.${reason}`) + (up.last_error_status ? ` (HTTP ${up.last_error_status})` : "") : EMPTY;
    if (error.textContent !== said) error.textContent = said;
    if (reason) delete error.dataset.empty; else error.dataset.empty = "";
    error.title = reason || "";
    error.dataset.reason = reason || "";

    const rows = data.problems.map((p) =>
      el("tr", { class: `health-${p.health}`, "data-id": p.id },
        el("td", {}, healthBadge(p.health)),
        el("td", {}, deviceLink(p.id)),
        el("td", { text: p.name || EMPTY }),
        el("td", { text: `${fmtTime(p.since_ms)} (${fmtAgo(p.since_ms)})` }),
        el("td", { class: "err", text: p.last_error || EMPTY })));
    replaceRows(document.querySelector("#problems tbody"), rows);
    document.getElementById("problems").hidden = rows.length === 0;
    document.getElementById("no-problems").hidden = rows.length !== 0;

    // A bus that is down is the cause of its devices' "unknown": shown as such.
    const buses = (data.buses || []).map((b) =>
      el("tr", { class: `health-${b.state === "down" ? "down" : b.state === "up" ? "ok" : "starting"}`, "data-id": b.id, "data-state": b.state },
        el("td", {}, el("span", { class: `badge health-${b.state === "down" ? "down" : b.state === "up" ? "ok" : "starting"}`, text: T(`bus.${b.state}`) })),
        el("td", { text: b.id }),
        el("td", { text: b.where }),
        el("td", { text: b.since_ms ? `${fmtTime(b.since_ms)} (${fmtAgo(b.since_ms)})` : EMPTY }),
        el("td", { class: "err", text: b.state === "down" ? `${b.reason}: ${b.error}` : EMPTY }),
        el("td", { text: typeof b.utilisation === "number" ? `${Math.round(b.utilisation * 100)} %` : EMPTY }),
        // A full cycle (every polled device read once) longer than the shortest interval asked
        // of the line: it is saturated, and every device's interval stretches alike.
        el("td", { class: b.cycle_s > b.interval_s ? "err" : "",
          title: b.cycle_s > b.interval_s ? T("bus.saturated") : "",
          text: typeof b.cycle_s === "number" ? `${fmtNum(b.cycle_s)} s / ${fmtNum(b.interval_s)} s` : EMPTY }),
        el("td", { text: fmtErrors(b.counters) })));
    replaceRows(document.querySelector("#buses tbody"), buses);
    document.getElementById("buses-panel").hidden = buses.length === 0;

    // Doors (readers that report one): open or closed since when, and whether the line to the
    // reader is encrypted; a plain-text link is shown as a problem.
    const doors = (data.doors || []).map((d) => {
      const state = d.open === true ? "open" : d.open === false ? "closed" : "unknown";
      const secure = d.secure_channel === true ? "yes" : d.secure_channel === false ? "no" : null;
      return el("tr", { class: `health-${d.health}`, "data-id": d.id, "data-door": state },
        el("td", {}, el("span", { class: `badge ${state === "open" ? "health-degraded" : "health-ok"}`, text: T(`door.${state}`) })),
        el("td", {}, el("a", { href: `/devices/${encodeURIComponent(d.id)}`, text: d.id })),
        el("td", { text: d.name || EMPTY }),
        el("td", { text: d.since_ms ? `${fmtTime(d.since_ms)} (${fmtAgo(d.since_ms)})` : EMPTY }),
        el("td", { class: secure === "no" ? "err" : "", text: secure ? T(`secure.${secure}`) : EMPTY }));
    });
    replaceRows(document.querySelector("#doors tbody"), doors);
    document.getElementById("doors-panel").hidden = doors.length === 0;

    // Tags (BLE wristbands, buttons, beacons): who is in range; the missing first. A tag whose
    // adapter is down is "unknown", never "away".
    const tagData = data.tags || { total: 0, shown: [] };
    const tags = tagData.shown.map((g) => {
      const badge = { present: "health-ok", away: "health-degraded", unknown: "health-unknown" }[g.presence] || "health-starting";
      const signal = typeof g.rssi === "number"
        ? `${g.rssi} dBm` + (g.distance ? ` · ${T(`distance.${g.distance}`)}` : "") : EMPTY;
      return el("tr", { class: `health-${g.health}`, "data-id": g.id, "data-presence": g.presence },
        el("td", {}, el("span", { class: `badge ${badge}`, text: T(`presence.${g.presence}`) })),
        el("td", {}, el("a", { href: `/devices/${encodeURIComponent(g.id)}`, text: g.id })),
        el("td", { text: g.name || EMPTY }),
        el("td", { text: g.since_ms ? `${fmtTime(g.since_ms)} (${fmtAgo(g.since_ms)})` : EMPTY }),
        el("td", { text: g.last_seen_ms ? fmtAgo(g.last_seen_ms) : EMPTY }),
        el("td", { text: signal }),
        el("td", { class: g.battery_low ? "err" : "", "data-low": g.battery_low ? "yes" : "no",
          text: typeof g.battery === "number" ? `${fmtNum(g.battery)} %` : EMPTY }));
    });
    replaceRows(document.querySelector("#tags tbody"), tags);
    document.getElementById("tags-panel").hidden = tagData.total === 0;
    document.getElementById("tags-count").textContent = tagData.total ? fmtNum(tagData.total) : "";
    document.getElementById("tags-more").hidden = tagData.total <= tagData.shown.length;
  }

  // ------------------------------------------------------------------ devices

  function deviceRow(d) {
    const last = d.last;
    return el("tr", { class: `health-${d.health}`, "data-id": d.id, "data-health": d.health },
      el("td", {}, healthBadge(d.health)),
      el("td", {}, deviceLink(d.id)),
      el("td", { text: d.name || EMPTY }),
      el("td", { text: fmtLocation(d.location) }),
      el("td", { class: "value", text: last ? `${last.point} = ${fmtValue(last.value, last.unit)}` : EMPTY }),
      el("td", { text: last ? fmtTime(last.ts) : EMPTY }),
      el("td", { class: "num", text: fmtNum(d.reads) }),
      el("td", { class: "num", text: d.failures ? `${fmtNum(d.failures)} (${fmtErrors(d.errors)})` : "0" }),
      el("td", { class: "err", text: d.last_error ? `${d.last_error} · ${fmtAgo(d.last_error_ms)}` : EMPTY }));
  }

  function devicesPage() {
    const q = document.getElementById("q");
    const health = document.getElementById("health");
    const params = new URLSearchParams(window.location.search);
    q.value = params.get("q") || "";
    health.value = params.get("health") || "";
    let last = BOOT.data;

    function matches(d, text) {
      if (!text) return true;
      const loc = d.location ? Object.values(d.location).join(" ") : "";
      const hay = [d.id, d.name, d.driver, d.kind, d.bus, d.last_error, loc, fmtLocation(d.location)]
        .filter((v) => v !== null && v !== undefined).join(" ").toLowerCase();
      return hay.includes(text.toLowerCase());
    }

    function render(data) {
      last = data;
      stamp(data);
      const text = q.value.trim();
      const wanted = health.value;
      const shown = data.devices.filter((d) => (!wanted || d.health === wanted) && matches(d, text));
      const tbody = document.querySelector("#devices tbody");
      // Rows are keyed by device and replaced only when they changed, so 500 devices refresh
      // without re-laying out the whole table every two seconds.
      const existing = new Map([...tbody.children].map((tr) => [tr.dataset.id, tr]));
      const rows = shown.map((d) => {
        const fresh = deviceRow(d);
        const old = existing.get(d.id);
        if (old && old.className === fresh.className && old.textContent === fresh.textContent) return old;
        return fresh;
      });
      const same = rows.length === tbody.children.length && rows.every((r, i) => tbody.children[i] === r);
      if (!same) tbody.replaceChildren(...rows);
      document.getElementById("count").textContent = T("devices.count", { shown: shown.length, total: data.devices.length });
      document.getElementById("no-devices").hidden = shown.length !== 0;
    }

    function onFilter() {
      const p = new URLSearchParams();
      if (q.value.trim()) p.set("q", q.value.trim());
      if (health.value) p.set("health", health.value);
      const search = p.toString();
      window.history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
      render(last);
    }
    q.addEventListener("input", onFilter);
    health.addEventListener("change", onFilter);
    render(BOOT.data);
    live("/api/devices", render);
  }

  // ------------------------------------------------------------------ device detail

  function eventRow(e, withDevice) {
    const cells = [el("td", { text: fmtTime(e.ts) })];
    if (withDevice) cells.push(el("td", {}, deviceLink(e.device)));
    cells.push(
      el("td", { text: e.type }),
      el("td", {}, el("span", { class: `sev sev-${e.severity}`, text: T(`severity.${e.severity}`) })),
      el("td", { class: "details", text: details(e.data) }));
    return el("tr", { class: `sev-${e.severity}` }, ...cells);
  }

  function chart(container, series, unit) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 640, H = 200, L = 56, R = 8, TOP = 10, B = 24;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("class", "chart-svg");
    const t = series.t, v = series.v;
    const tmax = serverNow, tmin = tmax - 3600 * 1000;
    let vmin = Math.min(...v), vmax = Math.max(...v);
    if (vmin === vmax) { vmin -= 1; vmax += 1; }
    const x = (ts) => L + ((ts - tmin) / (tmax - tmin)) * (W - L - R);
    const y = (val) => TOP + (1 - (val - vmin) / (vmax - vmin)) * (H - TOP - B);
    function add(tag, attrs, text) {
      const n = document.createElementNS(NS, tag);
      for (const [k, val] of Object.entries(attrs)) n.setAttribute(k, val);
      if (text !== undefined) n.textContent = text;
      svg.append(n);
      return n;
    }
    add("rect", { x: L, y: TOP, width: W - L - R, height: H - TOP - B, class: "chart-bg" });
    for (const val of [vmin, (vmin + vmax) / 2, vmax]) {
      add("line", { x1: L, x2: W - R, y1: y(val), y2: y(val), class: "chart-grid" });
      add("text", { x: L - 4, y: y(val) + 4, class: "chart-label", "text-anchor": "end" }, fmtValue(Number(val.toPrecision(4))));
    }
    for (let i = 0; i <= 4; i += 1) {
      const ts = tmin + (i * (tmax - tmin)) / 4;
      add("text", { x: x(ts), y: H - 6, class: "chart-label", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, clockTime.format(new Date(ts)));
    }
    const pts = t.map((ts, i) => `${x(ts).toFixed(1)},${y(v[i]).toFixed(1)}`).join(" ");
    add("polyline", { points: pts, class: "chart-line" });
    t.forEach((ts, i) => {
      const c = add("circle", { cx: x(ts), cy: y(v[i]), r: 2.5, class: "chart-dot" });
      const title = document.createElementNS(NS, "title");
      title.textContent = `${clockTime.format(new Date(ts))} ${fmtValue(v[i], unit)}`;
      c.append(title);
    });
    container.replaceChildren(svg);
  }

  function devicePage() {
    const base = `/api/devices/${encodeURIComponent(DEVICE)}`;
    const isTech = ROLE === "technician";
    for (const n of document.querySelectorAll(isTech ? ".viewer-only" : ".tech-only")) n.hidden = true;
    const select = document.getElementById("chart-point");
    let history = BOOT.history;
    let commandsShown = "";

    function renderDetail(data) {
      stamp(data);
      const d = data.device;
      fill(document.getElementById("main"), data);
      const badge = document.getElementById("dev-health");
      badge.className = `badge health-${d.health}`;
      badge.textContent = T(`health.${d.health}`);
      badge.dataset.health = d.health;
      document.getElementById("test-read").disabled = !data.can_test_read;

      const rows = data.points.map((p) =>
        el("tr", { class: `q-${p.quality}`, "data-point": p.name },
          el("td", { text: p.name }),
          el("td", { class: "value", text: fmtValue(p.value, p.unit) }),
          el("td", { text: p.reason ? `${T(`quality.${p.quality}`)} (${p.reason})` : T(`quality.${p.quality}`) }),
          el("td", { text: `${fmtTime(p.ts)} (${fmtAgo(p.ts)})` })));
      replaceRows(document.querySelector("#points tbody"), rows);
      document.getElementById("no-points").hidden = rows.length !== 0;

      const reported = Object.entries(data.reported || {}).map(([k, v]) =>
        el("tr", { "data-key": k }, el("th", { scope: "row", text: k }), el("td", { class: "wrap", text: v })));
      replaceRows(document.querySelector("#reported tbody"), reported);
      document.getElementById("reported-panel").hidden = reported.length === 0;

      const events = data.events.map((e) => eventRow(e, false));
      replaceRows(document.querySelector("#dev-events tbody"), events);
      document.getElementById("no-dev-events").hidden = events.length !== 0;

      const key = JSON.stringify(data.commands);
      if (key !== commandsShown) {
        commandsShown = key;
        document.getElementById("commands").replaceChildren(...data.commands.map((c) =>
          el("li", {}, el("code", { text: c.action }), commandText(c) ? ` – ${commandText(c)}` : "")));
        document.getElementById("cmd-action").replaceChildren(...data.commands.map((c) =>
          el("option", { value: c.action, text: c.action })));
        document.getElementById("no-commands").hidden = data.commands.length !== 0;
        document.getElementById("command-form").hidden = !isTech || data.commands.length === 0;
      }
    }

    function renderHistory(data) {
      history = data;
      const names = Object.keys(data.points).filter((n) => data.points[n].t.length);
      const current = select.value;
      const options = names.map((n) => el("option", { value: n, text: n }));
      if (select.options.length !== options.length || [...select.options].some((o, i) => o.value !== names[i])) {
        select.replaceChildren(...options);
        if (names.includes(current)) select.value = current;
      }
      const name = select.value;
      const box = document.getElementById("chart");
      document.getElementById("no-chart").hidden = Boolean(name);
      select.hidden = !name;
      if (name) chart(box, data.points[name], data.points[name].unit);
      else box.replaceChildren();
    }
    select.addEventListener("change", () => renderHistory(history));

    // A camera's snapshot comes back as base64: shown as the picture, not as text. Only
    // raster types and strict base64 go into the data: URL (the CSP allows data: images).
    function withImage(result) {
      const b64 = result && result.image_base64;
      const type = result && result.content_type;
      if (typeof b64 !== "string" || !/^image\/(jpeg|png|gif|webp)$/.test(type) || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) {
        return { rest: result, image: null };
      }
      const { image_base64: _, ...rest } = result;
      const image = el("img", { class: "snapshot", src: `data:${type};base64,${b64}`, alt: T("device.snapshot_alt", { id: DEVICE }) });
      return { rest, image };
    }

    function showResult(box, ok, title, children) {
      box.replaceChildren(el("p", { class: ok ? "good" : "bad", text: title }), ...(children || []));
      box.dataset.ok = String(ok);
    }

    // A button at work is aria-disabled, not disabled: a disabled button loses the keyboard
    // focus (to <body>), and a keyboard user would have to find their place again.
    function busy(button, on) {
      if (on) button.setAttribute("aria-disabled", "true");
      else button.removeAttribute("aria-disabled");
    }
    const isBusy = (button) => button.getAttribute("aria-disabled") === "true";

    const testButton = document.getElementById("test-read");
    testButton.addEventListener("click", async () => {
      if (isBusy(testButton)) return;
      const box = document.getElementById("test-result");
      busy(testButton, true);
      box.dataset.ok = "";
      box.replaceChildren(el("p", { class: "muted", text: T("device.reading") }));
      try {
        const r = await api(`${base}/read`, { method: "POST" });
        if (r.ok) {
          const readings = r.records.filter((x) => x.kind === "reading");
          const table = el("table", { class: "grid", id: "test-table" },
            el("tbody", {}, ...readings.map((x) => el("tr", { "data-point": x.point },
              el("td", { text: x.point }),
              el("td", { class: "value", text: fmtValue(x.value, x.unit) }),
              el("td", { text: T(`quality.${x.quality}`) })))));
          showResult(box, true, T("device.read_ok", { ms: r.duration_ms }), [table]);
        } else {
          showResult(box, false, T("device.read_failed", { reason: r.reason, error: r.error }));
        }
      } catch (e) {
        showResult(box, false, T("device.request_failed", { error: e.message }));
      } finally {
        busy(testButton, false);
      }
    });

    // "output=1 on=true" or a JSON object: the technician types what the CLI takes.
    function parseArgs(text) {
      text = text.trim();
      if (!text) return {};
      if (text.startsWith("{")) return JSON.parse(text);
      const args = {};
      for (const part of text.split(/\s+/)) {
        const at = part.indexOf("=");
        if (at < 1) throw new Error(T("device.args_invalid", { part }));
        const k = part.slice(0, at), raw = part.slice(at + 1);
        let v = raw;
        if (raw === "true" || raw === "false") v = raw === "true";
        else if (raw === "null") v = null;
        else if (/^-?\d+$/.test(raw)) v = parseInt(raw, 10);
        else if (/^-?\d*\.\d+(e-?\d+)?$/i.test(raw)) v = parseFloat(raw);
        args[k] = v;
      }
      return args;
    }

    document.getElementById("command-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const box = document.getElementById("cmd-result");
      const send = document.getElementById("cmd-send");
      if (isBusy(send)) return;
      box.dataset.ok = "";
      let args;
      try {
        args = parseArgs(document.getElementById("cmd-args").value);
      } catch (e) {
        showResult(box, false, e.message);
        return;
      }
      busy(send, true);
      try {
        const action = document.getElementById("cmd-action").value;
        const r = await api(`${base}/commands`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ action, args }),
        });
        if (r.status === "ok") {
          const { rest, image } = withImage(r.result);
          showResult(box, true, T("device.command_ok", { id: r.id, result: details(rest) }), image ? [image] : []);
        }
        else showResult(box, false, T("device.command_failed", { reason: r.reason, error: r.error }));
      } catch (e) {
        showResult(box, false, T("device.request_failed", { error: e.message }));
      } finally {
        busy(send, false);
      }
    });

    renderDetail(BOOT.data);
    renderHistory(BOOT.history);
    live(base, renderDetail);
    // Minute buckets: a refresh every 15 s is plenty.
    live(`${base}/history`, renderHistory, 15000);
  }

  // ------------------------------------------------------------------ events

  function eventsPage() {
    const typeSel = document.getElementById("ev-type");
    const devSel = document.getElementById("ev-device");
    const params = new URLSearchParams(window.location.search);
    const wanted = { type: params.get("type") || "", device: params.get("device") || "" };

    function options(select, values, current, allKey) {
      const list = [...new Set([...values, current].filter(Boolean))].sort();
      const key = list.join("\n");
      if (select.dataset.key !== key) {
        select.replaceChildren(el("option", { value: "", text: T(allKey) }), ...list.map((v) => el("option", { value: v, text: v })));
        select.dataset.key = key;
      }
      select.value = current;
    }

    function render(data) {
      stamp(data);
      options(typeSel, data.types, wanted.type, "events.all_types");
      options(devSel, data.devices, wanted.device, "events.all_devices");
      const rows = data.events.map((e) => eventRow(e, true));
      replaceRows(document.querySelector("#events tbody"), rows);
      document.getElementById("ev-count").textContent = T("events.count", { n: rows.length });
      document.getElementById("no-events").hidden = rows.length !== 0;
    }

    function path() {
      const p = new URLSearchParams();
      if (wanted.type) p.set("type", wanted.type);
      if (wanted.device) p.set("device", wanted.device);
      return `/api/events?${p.toString()}`;
    }

    const tick = live(path, render);
    function onChange() {
      wanted.type = typeSel.value;
      wanted.device = devSel.value;
      const p = new URLSearchParams(path().split("?")[1]).toString();
      window.history.replaceState(null, "", p ? `?${p}` : window.location.pathname);
      tick();
    }
    typeSel.addEventListener("change", onChange);
    devSel.addEventListener("change", onChange);
    if (wanted.type || wanted.device) tick();
    else render(BOOT.data);
  }

  // ------------------------------------------------------------------ config

  function renderConfig(data) {
    stamp(data);
    const v = data.validation;
    fill(document.getElementById("main"), data);
    const state = document.getElementById("valid-state");
    let key = "config.no_file";
    let cls = "state muted";
    if (v.valid === true) { key = "config.valid"; cls = "state good"; }
    if (v.valid === false) { key = "config.invalid"; cls = "state bad"; }
    state.className = cls;
    state.textContent = T(key, { n: (v.errors || []).length });
    state.dataset.value = String(v.valid);
    document.getElementById("config-drift").hidden = v.matches_running !== false;
    document.getElementById("config-errors").replaceChildren(...(v.errors || []).map((e) =>
      el("li", { text: `${e.file}:${e.line}:${e.col}: ${e.path ? `${e.path}: ` : ""}${e.message}` })));
    const pre = document.getElementById("config-yaml");
    if (pre.textContent !== data.yaml) pre.textContent = data.yaml;
  }

  // ------------------------------------------------------------------ start

  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav.split(" ").includes(PAGE)) a.setAttribute("aria-current", "page");
  }
  for (const b of document.querySelectorAll(".lang button")) {
    if (b.value === LANG) b.setAttribute("aria-pressed", "true");
  }
  // The filters live in the address (replaceState): switching language comes back to them.
  for (const form of document.querySelectorAll("form.lang")) {
    form.addEventListener("submit", () => {
      const next = form.querySelector("input[name=next]");
      if (next) next.value = window.location.pathname + window.location.search;
    });
  }

  if (PAGE === "overview") {
    renderOverview(BOOT.data);
    live("/api/status", renderOverview);
  } else if (PAGE === "devices") {
    devicesPage();
  } else if (PAGE === "device") {
    devicePage();
  } else if (PAGE === "events") {
    eventsPage();
  } else if (PAGE === "config") {
    renderConfig(BOOT.data);
    // The config changes rarely; re-validation is cached on the server anyway.
    live("/api/config", renderConfig, 10000);
  }
})();

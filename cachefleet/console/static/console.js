// cachefleet web console: polls the cluster's JSON, follows its events, draws SVG charts.
"use strict";

(function () {
  const body = document.body;
  const CLUSTER = body.dataset.cluster;
  const API = body.dataset.api;
  const CLUSTERS_API = body.dataset.clustersApi;
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW_S = 900;
  const EVENTS_SHOWN = 200;
  const REFRESH_ON = new Set([
    "graceful_failover", "failover_completed", "switch_primary", "node_replaced",
    "snapshot_completed", "snapshot_failed", "sdown", "sdown_cleared", "node_exited",
    "node_started", "modify_completed", "slots_migrated",
  ]);
  const IMPORTANT = new Set([
    "odown", "sdown", "failover_started", "failover_completed", "failover_aborted",
    "graceful_failover", "node_exited", "no_quorum", "no_eligible_replica", "snapshot_failed",
  ]);
  let model = null;

  // -- helpers -------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function shardColor(id) {
    const hue = (id * 137.508 + 200) % 360; // golden-angle steps: neighbours differ
    return `hsl(${hue.toFixed(0)}, 62%, 46%)`;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n < 10 && i ? n.toFixed(1) : n.toFixed(0)} ${units[i]}`;
  }
  function num(n, digits) {
    if (n === null || n === undefined) return "–";
    return Number(n).toFixed(digits || 0);
  }
  function short(n) {
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (Math.abs(n) >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return n >= 10 || n === 0 ? n.toFixed(0) : n.toFixed(2);
  }
  function clock(ts) {
    return new Date(ts * 1000).toISOString().slice(11, 19);
  }
  async function getJSON(url) {
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
    return resp.json();
  }

  // -- clusters list -------------------------------------------------------------------------
  async function loadClusters() {
    let data;
    try { data = await getJSON(CLUSTERS_API); } catch (e) { return; }
    const tbody = document.querySelector("#clusters tbody");
    tbody.replaceChildren(...data.clusters.map((c) => {
      const name = c.href ? el("a", { href: c.href }, c.name) : c.name;
      return el("tr", { "data-cluster": c.name, class: c.name === CLUSTER ? "current" : "" },
        el("td", {}, name), el("td", {}, c.engine || "?"), el("td", {}, c.mode || "?"),
        el("td", {}, c.shards === null || c.shards === undefined ? "–" : c.shards),
        el("td", {}, c.nodes === undefined ? "?" : c.nodes),
        el("td", {}, (c.zones || []).join(", ")),
        el("td", {}, c.running ? "running" : "stopped"));
    }));
  }

  // -- one cluster ---------------------------------------------------------------------------
  function nodeCard(n) {
    const role = el("span", { class: `badge role-${n.role}` }, n.role);
    const health = el("span", { class: `badge health-${n.health}` }, n.health);
    const rows = [
      ["shard", n.mode === "memcached" ? "–" : n.shard],
      ["memory", bytes(n.memory) + (n.memory_ratio !== null && n.memory_ratio !== undefined
        ? ` (${(n.memory_ratio * 100).toFixed(0)}%)` : "")],
      ["ops/s", num(n.ops_per_sec)],
      ["connections", num(n.connections)],
      ["lag", n.role === "replica" ? (n.lag_s === null ? "–" : `${num(n.lag_s)} s`) : "–"],
    ];
    const dl = el("dl", {});
    for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
    const card = el("div", {
      class: "node", "data-node": n.name, "data-role": n.role, "data-health": n.health,
      "data-shard": String(n.shard), title: n.address,
    }, el("span", { class: "name" }, n.name), role, health, dl);
    card.style.borderLeftColor = shardColor(n.shard);
    return card;
  }

  function renderShards(m) {
    const box = document.getElementById("shards");
    if (m.mode === "memcached") {
      box.replaceChildren(el("p", { class: "note" },
        "Shards: not shown — a memcached cluster's nodes each hold their own keys."));
      return;
    }
    box.replaceChildren(...m.shards.map((s) => {
      const button = el("button", { type: "button", class: "failover" }, "Test failover");
      button.dataset.shard = String(s.id);
      button.disabled = !m.can.failover || (m.recent_actions || []).some(
        (a) => a.kind === "failover" && a.state === "running" &&
          (a.target === `shard ${s.id}` || a.target === "group"));
      button.addEventListener("click", () => failover(s.id));
      const card = el("div", { class: "shard", "data-shard": String(s.id),
        "data-primary": s.primary || "" },
        el("b", {}, m.mode === "standalone" ? "Group" : `Shard ${s.id}`),
        el("span", {}, "primary ", el("b", { class: "primary" }, s.primary || "none")),
        el("span", { class: "meta" }, m.mode === "cluster" ? `${s.slots} slots` : `${s.nodes.length} nodes`),
        button);
      card.style.borderLeftColor = shardColor(s.id);
      return card;
    }));
  }

  function renderSlots(m) {
    const bar = document.getElementById("slot-bar");
    const note = document.getElementById("slot-note");
    if (!m.slot_map || m.slot_map.length === 0) {
      bar.style.display = "none";
      note.textContent = m.slot_note || "Not shown.";
      return;
    }
    bar.style.display = "";
    note.textContent = "";
    bar.replaceChildren(...m.slot_map.map(([start, end, shard]) => {
      const r = svg("rect", { x: start, y: 0, width: end - start + 1, height: 1,
        fill: shardColor(shard), "data-shard": shard });
      const t = svg("title", {});
      t.textContent = `slots ${start}-${end}: shard ${shard}`;
      r.append(t);
      return r;
    }));
  }

  function renderZones(m) {
    document.getElementById("zones").replaceChildren(...m.zones.map((z) =>
      el("div", { class: "zone", "data-zone": z.name }, el("h4", {}, z.name),
        ...z.nodes.map((n) => nodeCard({ ...n, mode: m.mode })))));
  }

  function renderActions(m) {
    const list = document.getElementById("action-log");
    list.replaceChildren(...(m.recent_actions || []).slice(0, 5).map((a) =>
      el("li", { class: a.state },
        `${clock(a.started)} ${a.kind}${a.target ? " of " + a.target : ""}: ${a.state}` +
        (a.message ? ` — ${a.message}` : ""))));
    const snap = document.getElementById("snapshot-button");
    snap.disabled = !m.can.snapshot || (m.recent_actions || []).some(
      (a) => a.kind === "snapshot" && a.state === "running");
    snap.title = m.can.snapshot ? "" : "not available for this cluster";
  }

  function render(m) {
    model = m;
    document.getElementById("overview").hidden = false;
    document.getElementById("cluster-name").textContent = m.name;
    const when = m.collected_at ? `values of ${clock(m.collected_at)} UTC` :
      (m.supervised ? "collecting…" : "supervisor not running: no live values");
    document.getElementById("cluster-meta").textContent =
      `${m.engine} · ` +
      (m.mode === "memcached" ? "" : m.mode === "standalone" ? "cluster mode disabled · " : "cluster mode · ") +
      `config epoch ${m.config_epoch === null ? "–" : m.config_epoch} · ${when}`;
    const cost = document.getElementById("cluster-cost");
    cost.textContent = m.cost ? `$${m.cost.month_to_date_usd.toFixed(2)} this month` : "";
    cost.title = m.cost ? `since ${m.cost.since}, at the price table's prices (cachefleet cost)` : "";
    renderActions(m);
    renderSlots(m);
    renderShards(m);
    renderZones(m);
  }

  async function refresh() {
    try { render(await getJSON(API + "cluster.json")); } catch (e) { /* next poll */ }
  }

  // -- charts --------------------------------------------------------------------------------
  function drawChart(figure, h, roles, shards) {
    const series = h.series[figure.dataset.series] || {};
    const box = figure.querySelector("svg");
    const W = box.clientWidth || 600, H = box.clientHeight || 140, L = 52, B = 16, T = 8;
    box.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const now = Date.now() / 1000;
    const x = (t) => L + (W - L - 4) * (1 - (now - t) / WINDOW_S);
    let max = 0;
    for (const values of Object.values(series)) for (const v of values) if (v > max) max = v;
    max = max > 0 ? max * 1.1 : 1;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const parts = [
      svg("line", { x1: L, x2: W, y1: H - B, y2: H - B, stroke: "#c5cad3" }),
      svg("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#c5cad3" }),
    ];
    const fmt = figure.dataset.series === "memory" ? bytes : short;
    for (const [v, label] of [[max, fmt(max)], [max / 2, fmt(max / 2)], [0, "0"]]) {
      const t = svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" });
      t.textContent = label;
      parts.push(t);
    }
    for (const [pos, label] of [[now - WINDOW_S, "-15 min"], [now - WINDOW_S / 3 * 2, "-10"],
      [now - WINDOW_S / 3, "-5"], [now, "now"]]) {
      const t = svg("text", { x: x(pos), y: H - 3, "text-anchor": pos === now ? "end" : "start" });
      t.textContent = label;
      parts.push(t);
    }
    let drawn = 0;
    for (const [node, values] of Object.entries(series).sort()) {
      let d = "";
      let pen = "M";
      values.forEach((v, i) => {
        if (v === null || h.t[i] < now - WINDOW_S) { pen = "M"; return; }
        d += `${pen}${x(h.t[i]).toFixed(1)},${y(v).toFixed(1)} `;
        pen = "L";
      });
      if (!d) continue;
      drawn += 1;
      const path = svg("path", { d, fill: "none", stroke: shardColor(shards[node] || 0),
        "stroke-width": 1.6, "data-node": node });
      if (roles[node] === "replica") path.setAttribute("stroke-dasharray", "4 3");
      const t = svg("title", {});
      t.textContent = node;
      path.append(t);
      parts.push(path);
    }
    if (!drawn) {
      const t = svg("text", { x: (W + L) / 2, y: H / 2, "text-anchor": "middle" });
      t.textContent = "no data yet";
      parts.push(t);
    }
    box.replaceChildren(...parts);
  }

  async function refreshCharts() {
    let h;
    try { h = await getJSON(API + "history.json"); } catch (e) { return; }
    const roles = {}, shards = {};
    for (const z of (model ? model.zones : [])) for (const n of z.nodes) {
      roles[n.name] = n.role; shards[n.name] = n.shard;
    }
    document.querySelectorAll(".chart").forEach((f) => drawChart(f, h, roles, shards));
    const legend = document.getElementById("chart-legend");
    legend.replaceChildren(...Object.keys(shards).sort().map((name) => {
      const s = el("span", {}, name + (roles[name] === "replica" ? " (replica: dashed)" : ""));
      s.style.setProperty("--c", shardColor(shards[name]));
      return s;
    }));
  }

  // -- events --------------------------------------------------------------------------------
  function eventItem(ev) {
    const skip = new Set(["v", "ts", "type", "cluster"]);
    const rest = Object.entries(ev).filter(([k]) => !skip.has(k))
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    return el("li", { class: IMPORTANT.has(ev.type) ? "important" : "", "data-type": ev.type },
      el("time", {}, clock(ev.ts || 0)), el("span", { class: "type" }, ev.type), rest);
  }

  function followEvents() {
    const list = document.getElementById("events");
    const state = document.getElementById("events-state");
    const source = new EventSource(API + "events");
    source.onopen = () => { state.textContent = "live"; };
    source.onerror = () => { state.textContent = "reconnecting…"; };
    source.onmessage = (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch (e) { return; }
      list.prepend(eventItem(ev));
      while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
      if (REFRESH_ON.has(ev.type)) refresh();
    };
  }

  // -- actions -------------------------------------------------------------------------------
  async function post(what, payload) {
    const resp = await fetch(API + what, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) alert(`${what}: ${data.error || resp.status}`);
    refresh();
  }

  function failover(shard) {
    const what = model && model.mode === "standalone" ? "the group" : `shard ${shard}`;
    if (!confirm(`Test failover of ${what}? Its primary hands over to a replica (no acknowledged write is lost).`)) return;
    post("failover", { shard });
  }

  document.getElementById("snapshot-button").addEventListener("click", () => {
    if (confirm("Take a snapshot of every shard now?")) post("snapshot", {});
  });

  // -- start ---------------------------------------------------------------------------------
  loadClusters();
  setInterval(loadClusters, 10000);
  if (!CLUSTER) {
    document.getElementById("pick").hidden = false;
    return;
  }
  refresh().then(refreshCharts);
  setInterval(refresh, 2000);
  setInterval(refreshCharts, 5000);
  followEvents();
})();

// Live dashboard: reads the engine's per-second points (server-sent events, polling as a fallback) and draws
// them as SVG charts. Hand-written on purpose: no CDN and no vendored library, so it works on closed networks.
// Every number here was computed by the engine (engine/ops/dashboard.py); the page only formats and plots.
"use strict";

(function () {
  const MAX_POINTS = 300;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 720, H = 220, PAD_L = 52, PAD_R = 10, PAD_T = 10, PAD_B = 22;

  const VERDICT_COLORS = {
    ok: "#1f9d55", bad_signature: "#c62828", unknown_key: "#ef6c00", revoked_key: "#8e0000",
    revoked_code: "#6a1b9a", expired: "#f9a825", not_yet_valid: "#00897b", unsigned_code: "#546e7a",
    id_card: "#1e88e5", malformed: "#9e9e9e",
  };

  const state = { points: [], connected: false, mode: "stream", windowS: null, updates: 0 };
  window.dashboard = state; // read by tests and by curious operators in the console

  // -- formatting -----------------------------------------------------------------------------------------
  function num(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    if (a >= 1e6) return (x / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (x / 1e3).toFixed(1) + "k";
    if (digits !== undefined) return x.toFixed(digits);
    if (a >= 100 || Number.isInteger(x)) return String(Math.round(x));
    if (a >= 10) return x.toFixed(1);
    return x.toFixed(2);
  }
  function bytes(x) {
    if (x === null || x === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return (i ? x.toFixed(1) : String(x)) + " " + units[i];
  }
  const FORMATS = {
    wal_backlog_bytes: bytes,
    cache_hit_rate: (x) => (x === null ? "–" : (100 * x).toFixed(1) + "%"),
    queue_scans: (x) => num(x, 0), wal_backlog_records: (x) => num(x, 0), active_devices: (x) => num(x, 0),
    quarantined_devices: (x) => num(x, 0),
  };

  // -- charts ---------------------------------------------------------------------------------------------
  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  class Chart {
    constructor(id, series, opts) {
      this.svg = document.getElementById(id);
      this.svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
      this.legend = document.getElementById(id.replace("chart-", "legend-"));
      this.series = series;
      this.stacked = !!(opts && opts.stacked);
    }
    render(points) {
      const svg = this.svg;
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      const n = points.length;
      // stacked charts draw cumulative sums; each series is [y0, y1] per point
      const layers = this.series.map(() => []);
      let maxY = 0;
      for (let i = 0; i < n; i++) {
        let base = 0;
        this.series.forEach((s, j) => {
          const raw = s.get(points[i]);
          const v = raw === null || raw === undefined ? null : raw;
          const y0 = this.stacked ? base : 0;
          const y1 = v === null ? null : y0 + v;
          if (this.stacked && v !== null) base = y1;
          layers[j].push([y0, y1]);
          if (y1 !== null && y1 > maxY) maxY = y1;
        });
      }
      const top = niceMax(maxY);
      const plotW = W - PAD_L - PAD_R, plotH = H - PAD_T - PAD_B;
      const t1 = n ? points[n - 1].t : Date.now() / 1000;
      const t0 = Math.min(n ? points[0].t : t1, t1 - 60);
      const x = (t) => PAD_L + ((t - t0) / Math.max(1, t1 - t0)) * plotW;
      const y = (v) => PAD_T + plotH - (v / top) * plotH;
      for (let k = 0; k <= 4; k++) {
        const v = (top * k) / 4;
        el("line", { class: "grid", x1: PAD_L, x2: W - PAD_R, y1: y(v), y2: y(v) }, svg);
        el("text", { x: PAD_L - 6, y: y(v) + 4, "text-anchor": "end" }, svg).textContent = num(v);
      }
      for (const frac of [0, 0.5, 1]) {
        const t = t0 + frac * (t1 - t0);
        const ago = Math.round(t1 - t);
        el("text", { x: x(t), y: H - 6, "text-anchor": frac === 0 ? "start" : frac === 1 ? "end" : "middle" }, svg)
          .textContent = ago ? `-${ago >= 120 ? Math.round(ago / 60) + " min" : ago + " s"}` : "now";
      }
      let drawn = 0;
      this.series.forEach((s, j) => {
        const pts = layers[j];
        if (!pts.some((p) => p[1] !== null && p[1] - p[0] > 0) && this.stacked) return;
        if (this.stacked) {
          const upper = [], lower = [];
          for (let i = 0; i < n; i++) {
            const [y0, y1] = pts[i];
            upper.push(`${x(points[i].t).toFixed(1)},${y(y1 === null ? y0 : y1).toFixed(1)}`);
            lower.unshift(`${x(points[i].t).toFixed(1)},${y(y0).toFixed(1)}`);
          }
          el("path", { d: "M" + upper.join("L") + "L" + lower.join("L") + "Z", fill: s.color, "fill-opacity": 0.85,
            "data-series": s.key }, svg);
        } else {
          let d = "", pen = false;
          for (let i = 0; i < n; i++) {
            const v = pts[i][1];
            if (v === null) { pen = false; continue; }
            d += (pen ? "L" : "M") + x(points[i].t).toFixed(1) + "," + y(v).toFixed(1);
            pen = true;
          }
          if (!d) return;
          el("path", { d: d, class: "line", stroke: s.color, "data-series": s.key }, svg);
        }
        drawn++;
      });
      // what the chart shows, for tests and for anyone inspecting the page
      svg.dataset.points = String(n);
      svg.dataset.max = String(maxY);
      svg.dataset.series = String(drawn);
      this.renderLegend(points[n - 1]);
    }
    renderLegend(last) {
      if (!this.legend) return;
      const parts = [];
      for (const s of this.series) {
        const v = last ? s.get(last) : null;
        if (this.stacked && !(v > 0)) continue;
        parts.push(`<span><i style="background:${s.color}"></i>${s.label} ${num(v)}</span>`);
      }
      this.legend.innerHTML = parts.join("");
    }
  }

  const verdictSeries = Object.keys(VERDICT_COLORS).map((v) => ({
    key: v, label: v.replace(/_/g, " "), color: VERDICT_COLORS[v], get: (p) => p.scans_per_s[v],
  }));
  verdictSeries.push({ key: "rejected", label: "rejected (bad item)", color: "#37474f", get: (p) => p.rejected_per_s });

  const charts = [
    new Chart("chart-scans", verdictSeries, { stacked: true }),
    new Chart("chart-latency", [
      { key: "verify_p50_ms", label: "verify p50", color: "#90caf9", get: (p) => p.verify_p50_ms },
      { key: "verify_p99_ms", label: "verify p99", color: "#1565c0", get: (p) => p.verify_p99_ms },
      { key: "insert_p50_ms", label: "insert p50", color: "#ffcc80", get: (p) => p.insert_p50_ms },
      { key: "insert_p99_ms", label: "insert p99", color: "#e65100", get: (p) => p.insert_p99_ms },
      { key: "ack_p99_ms", label: "ack p99", color: "#6a1b9a", get: (p) => p.ack_p99_ms },
    ]),
    new Chart("chart-backlog", [
      { key: "queue_scans", label: "queue (scans)", color: "#1565c0", get: (p) => p.queue_scans },
      { key: "wal_backlog_records", label: "WAL backlog (records)", color: "#c62828", get: (p) => p.wal_backlog_records },
    ]),
    new Chart("chart-batch", [
      { key: "batch_size_mean", label: "mean", color: "#00897b", get: (p) => p.batch_size_mean },
      { key: "batch_size_p50", label: "p50", color: "#80cbc4", get: (p) => p.batch_size_p50 },
    ]),
  ];

  // -- headline numbers and status ------------------------------------------------------------------------
  function renderTiles(p) {
    for (const node of document.querySelectorAll("[data-metric]")) {
      const key = node.dataset.metric;
      if (key === "store_up") continue;
      const v = p ? p[key] : null;
      node.textContent = (FORMATS[key] || num)(v === undefined ? null : v);
      node.dataset.value = v === null || v === undefined ? "" : String(v);
    }
    const store = document.getElementById("store");
    if (p) {
      store.textContent = p.store_up ? "store up" : "store DOWN";
      store.className = "pill " + (p.store_up ? "up" : "down");
      store.dataset.value = p.store_up ? "1" : "0";
    }
  }
  function setLink(ok, text) {
    state.connected = ok;
    const link = document.getElementById("link");
    link.textContent = text;
    link.className = "pill " + (ok ? "up" : "down");
  }

  let pending = false;
  function redraw() {
    // coalesce bursts (history + first point) into one frame; a hidden tab draws when it is shown again
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      const pts = state.points;
      renderTiles(pts[pts.length - 1]);
      for (const c of charts) c.render(pts);
      if (pts.length) {
        document.getElementById("window").textContent = String(Math.round(pts[pts.length - 1].window_s));
        const span = pts[pts.length - 1].t - pts[0].t;
        document.getElementById("span").textContent = span >= 120 ? Math.round(span / 60) + " min" : Math.round(span) + " s";
      }
      state.updates++;
    });
  }
  function setHistory(history) {
    state.points = history.slice(-MAX_POINTS);
    redraw();
  }
  function addPoint(p) {
    const pts = state.points;
    if (pts.length && p.t <= pts[pts.length - 1].t) return;
    pts.push(p);
    if (pts.length > MAX_POINTS) pts.splice(0, pts.length - MAX_POINTS);
    redraw();
  }

  // -- data: SSE first, polling if the stream cannot be kept (old proxies buffer event streams) --------------
  function poll() {
    state.mode = "poll";
    const once = () =>
      fetch("v1/stats?history=" + (state.points.length ? "0" : "1"), { cache: "no-store" })
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
        .then((body) => {
          if (body.history) setHistory(body.history);
          else if (body.latest) addPoint(body.latest);
          setLink(true, "live (polling)");
        })
        .catch(() => setLink(false, "engine unreachable"))
        .finally(() => setTimeout(once, 1000));
    once();
  }
  function stream() {
    if (!window.EventSource) return poll();
    const es = new EventSource("v1/stats/stream");
    let failures = 0;
    es.addEventListener("history", (e) => { failures = 0; setHistory(JSON.parse(e.data)); setLink(true, "live"); });
    es.addEventListener("stats", (e) => { addPoint(JSON.parse(e.data)); setLink(true, "live"); });
    es.onerror = () => {
      failures++;
      setLink(false, "reconnecting…");
      if (failures >= 5) { es.close(); poll(); }
    };
  }
  stream();
})();

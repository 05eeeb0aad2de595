// Shared helpers of the dashboard: JSON API calls with the page's CSRF token, formatting.
"use strict";
const Lab = {
  csrf: (document.querySelector('meta[name="csrf"]') || {}).content || "",

  async api(method, path, body) {
    const opts = { method, headers: { "X-CSRF-Token": Lab.csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch("/api/v1" + path, opts);
    } catch (_) { // the server is down or restarting: a failed result, not an unhandled rejection
      return { ok: false, status: 0, data: { detail: "the server cannot be reached; try again" } };
    }
    if (response.status === 401) Lab.loginAgain();
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    return { ok: response.ok, status: response.status, data };
  },

  // The session ended (expired, logged out in another tab, its token revoked): go to the login page,
  // which brings the user back here, instead of leaving a page that fails every refresh.
  loginAgain() {
    if (Lab.leaving) return;
    Lab.leaving = true;
    const here = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(here));
  },

  errorText(result) {
    const detail = result.data && result.data.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => `${d.loc.join(".")}: ${d.msg}`).join("; ");
    return `request failed (HTTP ${result.status})`;
  },

  esc(text) {
    return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  },

  when(iso) { return iso ? new Date(iso).toLocaleString() : ""; },

  bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  },

  num(v) {
    if (v === null || v === undefined) return "";
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : Number(v.toPrecision(4)).toString();
  },

  duration(s) {
    if (!isFinite(s) || s < 0) return "";
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  },

  // Vocabulary levels whose latest `collapse_lev@i` metric is 1 (mirrors server/services/words.py).
  collapsedLevels(lastMetrics) {
    return Object.entries(lastMetrics || {}).filter(([k, v]) => k.startsWith("collapse_") && typeof v === "number" && v >= 0.5)
      .map(([k]) => k.slice(9)).sort();
  },
  terminal(state) { return ["succeeded", "failed", "cancelled"].includes(state); },

  // The number a runs list shows: the kind's headline (the server's table: a linear probe's test top-1,
  // a kNN's top-1), else for kinds without one an accuracy among the latest metrics, else the loss.
  headline(run) {
    const h = run.headline;
    if (h) return `${h.label} ${h.unit === "%" ? h.value.toFixed(2) + "%" : Lab.num(h.value)}`;
    return Lab.keyMetric(run.last_metrics);
  },

  keyMetric(last) {
    const keys = Object.keys(last || {});
    const pick = keys.find((k) => /knn/i.test(k)) || keys.find((k) => /acc|top1/i.test(k))
      || keys.find((k) => /^loss_total$/.test(k)) || keys.find((k) => /^loss/i.test(k)) || keys[0];
    return pick ? `${pick} ${Lab.num(last[pick])}` : "";
  },

  // Calls `task` (async; resolves true on success) over and over with ONE call in flight: the next one
  // starts `interval` ms after the previous one ended, never on a clock that fires regardless. A failure or
  // an answer slower than `slow` ms doubles the pause (up to `max`); a quick success resets it. `now()`
  // asks for a call at once, or right after the one in flight (a filter changed mid-request). While the
  // page is hidden nothing is fetched; it refreshes when it is shown again.
  poller(task, { interval = 3000, max = 60000, slow = 1000 } = {}) {
    let timer = null, running = null, again = false, pause = interval;
    async function tick() {
      clearTimeout(timer);
      timer = null;
      if (running) { again = true; return running; }
      if (document.hidden) { timer = setTimeout(tick, interval); return; }
      again = false;
      running = (async () => {
        const started = performance.now();
        let ok = false;
        try { ok = await task(); } catch (_) { ok = false; }
        const quick = ok && performance.now() - started < slow;
        pause = quick ? interval : Math.min(max, Math.max(interval, pause * 2));
      })();
      await running;
      running = null;
      if (again) return tick();
      timer = setTimeout(tick, pause);
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden && !running) tick(); });
    return { now: tick, pause: () => pause };
  },

  progressPct(run) {
    if (run.state === "succeeded") return 100;
    return run.progress_total ? Math.min(100, (100 * run.progress_done) / run.progress_total) : 0;
  },
};

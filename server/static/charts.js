// Metric charts on uPlot: series kept per key (step -> value), grouped into charts by what they measure,
// with axis labels, whole-number step ticks, optional smoothing (EMA) and log scale.
"use strict";
const Charts = {
  // Chart a key belongs to: one panel per kind of quantity, so one y axis never mixes scales (a loss
  // next to a learning rate); per-epoch summaries ("epoch/...") get their own panels. A key of no known
  // kind gets a panel of its own instead of a mixed "other" one.
  groupOf(key) {
    if (key.startsWith("sys/")) return Charts.systemGroup(key.slice(4));
    const summary = key.startsWith("epoch/");
    const name = summary ? key.slice(6) : key;
    let group = name;
    if (/^words_used/.test(name)) group = "words used";
    else if (/^usage_entropy_norm/.test(name)) group = "usage entropy (normalised)";
    else if (/^usage_entropy/.test(name)) group = "usage entropy";
    else if (/^queue_age/.test(name)) group = "queue age";
    else if (/^temperature_mu/.test(name)) group = "temperature μ";
    else if (/^collapse_/.test(name)) group = "vocabulary collapse";
    else if (/perplex|ppl|^perp_/i.test(name)) group = "perplexity";
    else if (/acc|knn|top1|top5|map/i.test(name)) group = "accuracy";
    else if (/loss/i.test(name)) group = "loss";
    else if (/^lr$|^lr[_/]|learning_rate/i.test(name)) group = "learning rate";
    else if (/momentum|weight_decay|^wd$|kappa|warmup|schedule/i.test(name)) group = "schedules";
    else if (/img_per_s|images_per_s|samples_per_s|throughput|it_per_s/i.test(name)) group = "throughput";
    else if (/^epoch$/.test(name)) group = "epoch";
    return summary ? `${group} (epoch means)` : group;
  },

  // System metrics (`sys/...`: sampled by the worker, keyed by whole seconds since the run's first attempt
  // began): their own charts, by unit; one of no known unit gets a chart of its own.
  systemGroup(name) {
    if (/_mb$/.test(name)) return "system: memory (MiB) by seconds";
    if (/util|percent/.test(name)) return "system: utilisation (%) by seconds";
    if (/temp/i.test(name)) return "system: temperature by seconds";
    if (/power|watt/i.test(name)) return "system: power by seconds";
    return `system: ${name} by seconds`;
  },

  // The y-axis label of a panel: what it measures.
  axisLabel(group) {
    const base = group.replace(/ \(epoch means\)$/, "").replace(/^system: (.*) by seconds$/, "$1");
    return ({ throughput: "images / s", "queue age": "steps", "words used": "fraction of words",
      "vocabulary collapse": "collapsed (1) or not (0)" })[base] || base;
  },

  colors: ["#2f6fdf", "#e4572e", "#29a36a", "#a23bec", "#f2a541", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"],

  // [[steps], [values of key 1], [values of key 2], ...] on the union of steps, gaps as null.
  align(seriesList) {
    const tables = seriesList.map((s) => [s.steps, s.values]);
    if (!tables.length) return [[]];
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  },

  // Exponential moving average with TensorBoard's debiasing: s_i = w*s_(i-1) + (1-w)*v_i from s_0 = 0,
  // divided by 1 - w^n (n: finite values seen so far), so the start is not pulled towards 0. Missing and
  // non-finite values stay missing and do not move the average. weight 0: the values themselves.
  ema(values, weight) {
    if (!(weight > 0)) return values.slice();
    let last = 0, n = 0;
    return values.map((v) => {
      if (v === null || v === undefined || !isFinite(v)) return v === undefined ? null : v;
      last = last * weight + (1 - weight) * v;
      n += 1;
      return last / (1 - Math.pow(weight, n));
    });
  },

  // Tick steps for an integer axis (steps, images): 1, 2, 5, 10, 20, 50 ... never a fraction.
  integerIncrs: Array.from({ length: 16 }, (_, i) => [1, 2, 5].map((m) => m * 10 ** i)).flat(),

  tickText(v) {
    if (v === null || v === undefined) return "";
    const a = Math.abs(v);
    return a >= 1e6 || (a !== 0 && a < 1e-3) ? v.toExponential(1) : Number(v.toPrecision(6)).toString();
  },

  // A new chart box in `container`, or a fresh plot in an existing box (when its series changed).
  // opts: yLabel (default: the panel's quantity), xLabel ("step"), integerX (true: whole-number ticks),
  // log (a log y axis: values <= 0 are left out).
  create(container, title, labels, data, box, opts = {}) {
    if (box) {
      if (box.plot) box.plot.destroy();
    } else {
      box = document.createElement("div");
      box.className = "chart";
      box.dataset.title = title;
      box.innerHTML = `<h3>${Lab.esc(title)}</h3>`;
      container.appendChild(box);
    }
    const xLabel = opts.xLabel || (title.startsWith("system:") ? "seconds since start" : "step");
    const integerX = opts.integerX !== undefined ? opts.integerX : true;
    const width = Math.max(320, box.clientWidth || container.clientWidth || 480);
    const xAxis = { label: xLabel, values: (_, splits) => splits.map(Charts.tickText) };
    if (integerX) xAxis.incrs = Charts.integerIncrs;
    const yAxis = { label: opts.yLabel || Charts.axisLabel(title), size: 60, values: (_, splits) => splits.map(Charts.tickText) };
    if (opts.log) data = [data[0], ...data.slice(1).map((ys) => ys.map((v) => (v === null || v > 0 ? v : null)))];
    const options = {
      width, height: 240,
      scales: { x: { time: false }, y: opts.log ? { distr: 3 } : {} },
      axes: [xAxis, yAxis],
      series: [{ label: xLabel, value: (_, v) => (v === null || v === undefined ? "" : Charts.tickText(v)) }].concat(labels.map((label, i) => ({
        label, stroke: Charts.colors[i % Charts.colors.length], width: 1.5, spanGaps: true,
        value: (_, v) => (v === null || v === undefined ? "" : Lab.num(v)),
      }))),
    };
    box.plot = new uPlot(options, data, box);
    return box.plot;
  },
};

// Live series of one run: history from the REST API, new points from the SSE stream.
class RunSeries {
  constructor() { this.byKey = new Map(); }

  // The REST history, with the live points already received on top: the stream may have delivered
  // steps newer than the history's read before its answer arrived, and they will not come again.
  setHistory(series) {
    for (const s of series) {
      const map = new Map();
      s.steps.forEach((step, i) => map.set(step, s.values[i]));
      for (const [step, value] of this.byKey.get(s.key) || []) map.set(step, value);
      this.byKey.set(s.key, map);
    }
  }

  add(points) { // [[key, step, value, time], ...]
    for (const [key, step, value] of points) {
      if (!this.byKey.has(key)) this.byKey.set(key, new Map());
      this.byKey.get(key).set(step, value);
    }
  }

  size() { let n = 0; for (const m of this.byKey.values()) n += m.size; return n; }

  series(key) {
    const entries = [...this.byKey.get(key).entries()].sort((a, b) => a[0] - b[0]);
    return { key, steps: entries.map((e) => e[0]), values: entries.map((e) => e[1]) };
  }

  groups() {
    const out = new Map();
    for (const key of [...this.byKey.keys()].sort()) {
      const group = Charts.groupOf(key);
      if (!out.has(group)) out.set(group, []);
      out.get(group).push(key);
    }
    return out;
  }
}

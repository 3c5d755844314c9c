// A small SVG line chart: several series of (step, value) points on shared, auto-scaled axes.

const NS = "http://www.w3.org/2000/svg";
const W = 640, H = 240, PAD = { left: 48, right: 12, top: 10, bottom: 24 };

function el(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count;
  const step = [1, 2, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

export class LineChart {
  // series: [{key, label, color}]; the container gets the svg and a legend.
  constructor(container, series, { yMin, yMax } = {}) {
    this.series = series.map((s) => ({ ...s, points: [] }));
    this.fixed = { yMin, yMax };
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const legend = document.createElement("div");
    legend.className = "legend";
    for (const s of this.series) {
      const item = document.createElement("span");
      item.innerHTML = `<span class="swatch" style="background:${s.color}"></span>`;
      item.append(s.label);
      legend.append(item);
    }
    container.classList.add("chart");
    container.append(this.svg, legend);
    this.draw();
  }

  add(key, step, value) {
    const s = this.series.find((x) => x.key === key);
    if (!s || typeof value !== "number" || !Number.isFinite(value)) return;
    const last = s.points[s.points.length - 1];
    if (last && last[0] === step) last[1] = value;
    else s.points.push([step, value]);
  }

  draw() {
    this.svg.replaceChildren();
    const all = this.series.flatMap((s) => s.points);
    if (!all.length) {
      this.svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        "No metrics yet"));
      return;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    let y0 = this.fixed.yMin ?? Math.min(...ys), y1 = this.fixed.yMax ?? Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
    const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
    for (const t of niceTicks(y0, y1, 4)) {
      this.svg.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: py(t), y2: py(t), class: "axis" }));
      this.svg.append(el("text", { x: PAD.left - 6, y: py(t) + 3, "text-anchor": "end", class: "tick" },
        String(+t.toPrecision(3))));
    }
    for (const t of niceTicks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
      this.svg.append(el("text", { x: px(t), y: H - 6, "text-anchor": "middle", class: "tick" }, String(t)));
    }
    for (const s of this.series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join("");
      this.svg.append(el("path", { d, fill: "none", stroke: s.color, "stroke-width": 2,
        "vector-effect": "non-scaling-stroke", "data-series": s.key, "data-points": s.points.length }));
      if (s.points.length < 40) {
        for (const p of s.points) {
          this.svg.append(el("circle", { cx: px(p[0]), cy: py(p[1]), r: 2.5, fill: s.color }));
        }
      }
    }
  }
}

// Shared helpers of the lab page: the JSON API, canvas plotting, and error display.
// Every number drawn comes from the server; these helpers only map numbers to pixels.
"use strict";

const Lab = {
  colors: {
    ink: "#1d2430", muted: "#7a8494", grid: "#e6e9ee", blue: "#2457a6", orange: "#e07b22",
    green: "#2e9e4f", red: "#c8372d", shade: "rgba(120, 130, 150, 0.18)", purple: "#7b3fb3",
  },

  // POST `params` as JSON to an endpoint; resolves to the reply or throws its error message.
  async api(path, params) {
    const reply = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(params || {}),
    });
    const data = await reply.json();
    if (!reply.ok) throw new Error(data.error || `HTTP ${reply.status}`);
    return data;
  },

  // Run `fn` and show any failure in the card's error box (never the console: the tests
  // treat console errors as failures, and a bad prompt is the user's, not the page's).
  async guard(prefix, fn) {
    const box = document.getElementById(`${prefix}-error`);
    try {
      const out = await fn();
      box.textContent = "";
      return out;
    } catch (err) {
      box.textContent = String(err.message || err);
      return null;
    }
  },

  // Count renders on the canvas element so tests can wait for a fresh drawing.
  rendered(canvas) {
    canvas.dataset.renders = String(Number(canvas.dataset.renders || 0) + 1);
  },

  context(canvas) {
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.font = "13px 'DejaVu Sans', sans-serif";
    ctx.textBaseline = "middle";
    return ctx;
  },

  text(ctx, str, x, y, opts = {}) {
    ctx.save();
    ctx.fillStyle = opts.color || Lab.colors.ink;
    ctx.font = opts.font || ctx.font;
    ctx.textAlign = opts.align || "left";
    ctx.fillText(str, x, y);
    ctx.restore();
  },

  // A plot frame: box {x, y, w, h} in pixels, data ranges xr = [lo, hi], yr = [lo, hi].
  frame(ctx, box, xr, yr, labels = {}) {
    const sx = (v) => box.x + ((v - xr[0]) / (xr[1] - xr[0])) * box.w;
    const sy = (v) => box.y + box.h - ((v - yr[0]) / (yr[1] - yr[0])) * box.h;
    ctx.save();
    ctx.strokeStyle = Lab.colors.grid;
    ctx.lineWidth = 1;
    for (const v of Lab.ticks(xr[0], xr[1], 6)) {
      ctx.beginPath(); ctx.moveTo(sx(v), box.y); ctx.lineTo(sx(v), box.y + box.h); ctx.stroke();
      Lab.text(ctx, Lab.fmt(v), sx(v), box.y + box.h + 12, { align: "center", color: Lab.colors.muted });
    }
    for (const v of Lab.ticks(yr[0], yr[1], 5)) {
      ctx.beginPath(); ctx.moveTo(box.x, sy(v)); ctx.lineTo(box.x + box.w, sy(v)); ctx.stroke();
      Lab.text(ctx, Lab.fmt(v), box.x - 6, sy(v), { align: "right", color: Lab.colors.muted });
    }
    ctx.strokeStyle = Lab.colors.muted;
    ctx.strokeRect(box.x, box.y, box.w, box.h);
    ctx.restore();
    if (labels.x) Lab.text(ctx, labels.x, box.x + box.w / 2, box.y + box.h + 28, { align: "center" });
    if (labels.y) Lab.text(ctx, labels.y, box.x, box.y - 12, { align: "left" });
    return { sx, sy };
  },

  // About `count` round tick values covering [lo, hi].
  ticks(lo, hi, count) {
    const span = hi - lo;
    if (!(span > 0)) return [lo];
    const raw = span / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) {
      out.push(Math.abs(v) < 1e-12 * span ? 0 : v);
    }
    return out;
  },

  fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(1);
    return String(Number(v.toPrecision(4)));
  },

  // A polyline through (xs[i], ys[i]); null values break the line.
  line(ctx, map, xs, ys, color, width = 2, dash = []) {
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.setLineDash(dash);
    ctx.beginPath();
    let open = false;
    for (let i = 0; i < xs.length; i++) {
      if (ys[i] === null || ys[i] === undefined) { open = false; continue; }
      const px = map.sx(xs[i]), py = map.sy(ys[i]);
      if (open) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      open = true;
    }
    ctx.stroke();
    ctx.restore();
  },

  arrow(ctx, x0, y0, x1, y1, color, width = 2.5) {
    const ang = Math.atan2(y1 - y0, x1 - x0);
    const len = Math.hypot(x1 - x0, y1 - y0);
    const head = Math.min(10, len * 0.5);
    ctx.save();
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = width;
    ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
    if (len > 1) {
      ctx.beginPath();
      ctx.moveTo(x1, y1);
      ctx.lineTo(x1 - head * Math.cos(ang - 0.4), y1 - head * Math.sin(ang - 0.4));
      ctx.lineTo(x1 - head * Math.cos(ang + 0.4), y1 - head * Math.sin(ang + 0.4));
      ctx.closePath(); ctx.fill();
    }
    ctx.restore();
  },

  // Range [min, max] of the finite values, padded; `fallback` when there are none.
  range(values, fallback = [0, 1], pad = 0.08) {
    const finite = values.filter((v) => v !== null && Number.isFinite(v));
    if (!finite.length) return fallback;
    let lo = Math.min(...finite), hi = Math.max(...finite);
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const p = (hi - lo) * pad;
    return [lo - p, hi + p];
  },

  escape(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  },

  // Re-run `fn` when any of the elements (ids) fires `event`.
  on(ids, event, fn) {
    for (const id of ids) document.getElementById(id).addEventListener(event, fn);
  },
};

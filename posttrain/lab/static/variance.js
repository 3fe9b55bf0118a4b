// Canvas 2: single-rollout gradient estimates as dots, with and without a baseline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("var-canvas");
  const view = { data: null, seed: 0 };

  async function load() {
    const data = await Lab.guard("var", () => Lab.api("/api/variance", {
      n: Number($("var-n").value),
      p: Number($("var-p").value),
      baseline: $("var-baseline").value,
      seed: view.seed,
    }));
    if (data) view.data = data;
    draw();
  }

  // Half-width of the view: covers 98% of the shown dots and the true gradient.
  function extent(clouds, truth) {
    const radii = [];
    for (const c of clouds) for (const [x, y] of c.dots) radii.push(Math.max(Math.abs(x), Math.abs(y)));
    radii.sort((a, b) => a - b);
    const q = radii.length ? radii[Math.floor(0.98 * (radii.length - 1))] : 0;
    return Math.max(q, 1.6 * Math.max(Math.abs(truth[0]), Math.abs(truth[1])), 1e-3) * 1.1;
  }

  // The 2-sigma ellipse of a cloud's covariance (drawing aid; the variances come from the server).
  function ellipse(ctx, map, dots, color) {
    const n = dots.length;
    if (n < 3) return;
    let mx = 0, my = 0;
    for (const [x, y] of dots) { mx += x / n; my += y / n; }
    let sxx = 0, syy = 0, sxy = 0;
    for (const [x, y] of dots) { sxx += (x - mx) ** 2; syy += (y - my) ** 2; sxy += (x - mx) * (y - my); }
    sxx /= n - 1; syy /= n - 1; sxy /= n - 1;
    const tr = sxx + syy, det = sxx * syy - sxy * sxy;
    const l1 = tr / 2 + Math.sqrt(Math.max(tr * tr / 4 - det, 0)), l2 = Math.max(tr - l1, 0);
    const ang = Math.atan2(l1 - sxx, sxy || 1e-12);
    ctx.save();
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.setLineDash([5, 4]);
    ctx.beginPath();
    for (let i = 0; i <= 64; i++) {
      const t = (i / 64) * 2 * Math.PI;
      const ex = 2 * Math.sqrt(l1) * Math.cos(t), ey = 2 * Math.sqrt(l2) * Math.sin(t);
      const x = mx + ex * Math.cos(ang) - ey * Math.sin(ang), y = my + ex * Math.sin(ang) + ey * Math.cos(ang);
      if (i) ctx.lineTo(map.sx(x), map.sy(y)); else ctx.moveTo(map.sx(x), map.sy(y));
    }
    ctx.stroke();
    ctx.restore();
  }

  function cloud(ctx, map, c, color, label) {
    ctx.save();
    ctx.fillStyle = color; ctx.globalAlpha = 0.35;
    for (const [x, y] of c.dots) { ctx.beginPath(); ctx.arc(map.sx(x), map.sy(y), 3, 0, 2 * Math.PI); ctx.fill(); }
    ctx.restore();
    ellipse(ctx, map, c.dots, color);
    // Rollouts with zero weight all land on the origin: say how many are stacked there.
    const zeros = Math.round(c.zero_fraction * c.dots.length);
    if (zeros > 1) {
      ctx.save(); ctx.strokeStyle = color; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(map.sx(0), map.sy(0), 7, 0, 2 * Math.PI); ctx.stroke(); ctx.restore();
      Lab.text(ctx, `${zeros} at 0`, map.sx(0) - 10, map.sy(0) + 16, { align: "right", color, font: "bold 12px sans-serif" });
    }
    // The N-sample estimate: the mean of the dots.
    const [mx, my] = c.mean, px = map.sx(mx), py = map.sy(my);
    ctx.save(); ctx.strokeStyle = color; ctx.lineWidth = 3;
    ctx.beginPath(); ctx.moveTo(px - 7, py - 7); ctx.lineTo(px + 7, py + 7); ctx.moveTo(px - 7, py + 7); ctx.lineTo(px + 7, py - 7); ctx.stroke();
    ctx.restore();
    return label;
  }

  function draw() {
    const ctx = Lab.context(canvas);
    const d = view.data;
    if (!d) { Lab.rendered(canvas); return; }
    const showNone = $("var-show-none").checked || !d.with_baseline;
    const clouds = [];
    if (showNone) clouds.push(d.none);
    if (d.with_baseline) clouds.push(d.with_baseline);
    const e = extent(clouds, d.true_gradient);
    const box = { x: 60, y: 30, w: 370, h: 370 };
    const map = Lab.frame(ctx, box, [-e, e], [-e, e], { x: "∂J/∂θ₁", y: "∂J/∂θ₂" });
    ctx.save(); ctx.beginPath(); ctx.rect(box.x, box.y, box.w, box.h); ctx.clip();
    if (showNone) cloud(ctx, map, d.none, Lab.colors.orange);
    if (d.with_baseline) cloud(ctx, map, d.with_baseline, Lab.colors.blue);
    Lab.arrow(ctx, map.sx(0), map.sy(0), map.sx(d.true_gradient[0]), map.sy(d.true_gradient[1]), Lab.colors.ink, 3);
    ctx.restore();
    // Legend and numbers.
    let y = 50;
    const line = (str, opts) => { Lab.text(ctx, str, 470, y, opts); y += 22; };
    line(`${d.n} rollouts, P(reward = 1) = ${d.p_reward.toFixed(3)} (${d.rewarded_actions} of ${d.num_actions} actions rewarded)`);
    line(`→ true gradient (exact, enumerated): (${Lab.fmt(d.true_gradient[0])}, ${Lab.fmt(d.true_gradient[1])})`, { font: "bold 13px sans-serif" });
    y += 6;
    const rows = [["no baseline", d.none, Lab.colors.orange]];
    if (d.with_baseline) rows.push([`baseline: ${d.baseline === "value" ? "exact V" : "batch mean"}`, d.with_baseline, Lab.colors.blue]);
    for (const [name, c, color] of rows) {
      line(`● ${name}`, { color, font: "bold 13px sans-serif" });
      line(`   variance per rollout (trace): ${Lab.fmt(c.variance)}` +
        (c.exact_variance === null ? "" : `   exact: ${Lab.fmt(c.exact_variance)}`));
      line(`   ✕ mean of the ${d.n}: (${Lab.fmt(c.mean[0])}, ${Lab.fmt(c.mean[1])}), error ${Lab.fmt(c.error)}`);
      line(`   zero estimates: ${(100 * c.zero_fraction).toFixed(0)}%`);
    }
    line("Dashed: 2σ ellipse of the dots.", { color: Lab.colors.muted });
    const ratio = d.with_baseline && d.with_baseline.variance > 0 ? d.none.variance / d.with_baseline.variance : null;
    $("var-readout").textContent = `Variance without baseline ${Lab.fmt(d.none.variance)}` +
      (d.with_baseline ? `, with baseline ${Lab.fmt(d.with_baseline.variance)}` +
        (ratio ? ` (${ratio.toFixed(1)}× lower)` : "") : "") + ".";
    Lab.rendered(canvas);
  }

  $("var-n").addEventListener("input", () => { $("var-n-val").textContent = $("var-n").value; });
  $("var-p").addEventListener("input", () => { $("var-p-val").textContent = Number($("var-p").value).toFixed(2); });
  Lab.on(["var-n", "var-p", "var-baseline"], "change", load);
  $("var-show-none").addEventListener("change", draw);
  $("var-resample").addEventListener("click", () => { view.seed += 1; load(); });
  window.labVariance = view;
  load();
})();

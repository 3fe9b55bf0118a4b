// Canvas 4: PPO's clipped objective against the ratio, from policy_loss_clipped on the server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("clip-canvas");
  const view = { data: null };

  function labels() {
    $("clip-adv-val").textContent = Number($("clip-adv").value).toFixed(2);
    $("clip-eps-val").textContent = Number($("clip-eps").value).toFixed(2);
    $("clip-ratio-val").textContent = Number($("clip-ratio").value).toFixed(2);
  }

  async function load() {
    labels();
    const data = await Lab.guard("clip", () => Lab.api("/api/clip", {
      advantage: Number($("clip-adv").value),
      eps: Number($("clip-eps").value),
      ratio: Number($("clip-ratio").value),
      r_min: 0, r_max: 2, points: 401,
    }));
    if (data) view.data = data;
    draw();
  }

  function draw() {
    const ctx = Lab.context(canvas);
    const d = view.data;
    if (!d) { Lab.rendered(canvas); return; }
    const box = { x: 70, y: 30, w: 560, h: 300 };
    const ys = d.objective.concat(d.unclipped, [0]);
    const yr = Lab.range(ys, [-1, 1]);
    const map = Lab.frame(ctx, box, [0, 2], yr, { x: "ratio r = π_θ / π_old", y: "objective" });
    // Shade every run of grid points where the clip is active (zero gradient).
    ctx.save(); ctx.fillStyle = Lab.colors.shade;
    const step = d.ratio[1] - d.ratio[0];
    let start = null;
    d.clipped.forEach((c, i) => {
      if (c && start === null) start = i;
      if ((!c || i === d.clipped.length - 1) && start !== null) {
        const end = c ? i : i - 1;
        const x0 = map.sx(d.ratio[start] - step / 2), x1 = map.sx(d.ratio[end] + step / 2);
        ctx.fillRect(Math.max(x0, box.x), box.y, Math.min(x1, box.x + box.w) - Math.max(x0, box.x), box.h);
        start = null;
      }
    });
    ctx.restore();
    for (const b of d.bounds) Lab.line(ctx, map, [b, b], yr, Lab.colors.muted, 1, [3, 3]);
    Lab.line(ctx, map, [0, 2], [0, 0], Lab.colors.muted, 1);
    Lab.line(ctx, map, d.ratio, d.unclipped, Lab.colors.orange, 1.5, [6, 4]);
    Lab.line(ctx, map, d.ratio, d.objective, Lab.colors.blue, 3);
    // The probe ratio and its objective value.
    const p = d.probe, px = map.sx(p.ratio), py = map.sy(p.objective);
    ctx.save(); ctx.fillStyle = p.clipped ? Lab.colors.red : Lab.colors.green;
    ctx.beginPath(); ctx.arc(px, py, 6, 0, 2 * Math.PI); ctx.fill(); ctx.restore();
    Lab.text(ctx, `${p.objective.toFixed(3)}`, px + 10, py - 12, { font: "bold 14px sans-serif" });
    // Legend and the probe's numbers.
    let y = 50;
    const line = (s, o) => { Lab.text(ctx, s, 660, y, o); y += 22; };
    line(`A = ${d.advantage.toFixed(2)}, ε = ${d.eps.toFixed(2)}`, { font: "bold 14px sans-serif" });
    line("— min(A·r, A·clip(r, 1−ε, 1+ε))", { color: Lab.colors.blue });
    line("- - A·r (unclipped)", { color: Lab.colors.orange });
    line("▒ clip active: zero gradient", { color: Lab.colors.muted });
    y += 10;
    line(`at r = ${p.ratio.toFixed(2)}:`);
    line(`  clipped objective = ${p.objective.toFixed(3)}`, { font: "bold 14px sans-serif" });
    line(`  unclipped A·r = ${p.unclipped.toFixed(3)}`);
    line(`  d objective / d r = ${p.gradient.toFixed(3)}`);
    line(p.clipped ? "  clip active: no gradient" : "  clip inactive", { color: p.clipped ? Lab.colors.red : Lab.colors.green });
    $("clip-readout").textContent = `A = ${d.advantage.toFixed(2)}, ε = ${d.eps.toFixed(2)}, r = ${p.ratio.toFixed(2)}: ` +
      `objective ${p.objective.toFixed(3)} (unclipped ${p.unclipped.toFixed(3)}), gradient ${p.gradient.toFixed(3)}` +
      (p.clipped ? " — the clip is active." : ".");
    Lab.rendered(canvas);
  }

  function example(adv, ratio) {
    $("clip-adv").value = adv; $("clip-eps").value = 0.2; $("clip-ratio").value = ratio;
    load();
  }

  Lab.on(["clip-adv", "clip-eps", "clip-ratio"], "input", labels);
  Lab.on(["clip-adv", "clip-eps", "clip-ratio"], "change", load);
  $("clip-ex1").addEventListener("click", () => example(0.5, 1.35));
  $("clip-ex2").addEventListener("click", () => example(-0.5, 0.65));
  window.labClip = view;
  load();
})();

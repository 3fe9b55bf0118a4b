// Canvas 3: the lecture's two-state example; per-sample pushes with and without a baseline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("base-canvas");
  const view = { data: null };
  const LECTURE = { r00: 11, r01: 9, r10: 0, r11: 2, b0: 10, b1: 1 };

  async function load() {
    const v = (id) => Number($(`base-${id}`).value);
    const data = await Lab.guard("base", () => Lab.api("/api/baseline", {
      rewards: [[v("r00"), v("r01")], [v("r10"), v("r11")]],
      b: [v("b0"), v("b1")],
      baseline: $("base-on").checked ? "on" : "off",
    }));
    if (data) view.data = data;
    draw();
  }

  function panel(ctx, d, s, x0) {
    const w = 400, top = 40, mid = 190, colors = Lab.colors;
    // The longest push of the current mode sets the scale (printed below the panels), so
    // the small baseline-corrected pushes stay readable; the numbers carry the magnitudes.
    const scale = Math.max(...d.samples.map((x) => Math.abs(x.push[x.action])), 1e-9);
    Lab.text(ctx, `state s${s + 1}`, x0 + w / 2, top - 18, { align: "center", font: "bold 15px sans-serif" });
    ctx.strokeStyle = colors.grid; ctx.beginPath(); ctx.moveTo(x0, mid); ctx.lineTo(x0 + w, mid); ctx.stroke();
    for (let a = 0; a < 2; a++) {
      const smp = d.samples[2 * s + a];
      const cx = x0 + 100 + a * 200;
      const push = smp.push[a]; // the sample's push on its own action's logit
      const len = (Math.abs(push) / scale) * 110;
      const color = push > 0 ? colors.green : push < 0 ? colors.red : colors.muted;
      Lab.arrow(ctx, cx, mid, cx, mid - Math.sign(push) * len, color, 6);
      Lab.text(ctx, `a${a + 1}`, cx, mid + 16, { align: "center", font: "bold 14px sans-serif" });
      Lab.text(ctx, `R = ${Lab.fmt(smp.reward)}`, cx + 12, top + 6, { color: colors.muted });
      Lab.text(ctx, d.baseline ? `R − b = ${Lab.fmt(smp.weight)}` : `weight R = ${Lab.fmt(smp.weight)}`,
        cx + 12, top + 26, { color });
      Lab.text(ctx, `push ${push >= 0 ? "+" : ""}${Lab.fmt(push)}`, cx + 12, mid + 16 + (push >= 0 ? 18 : 36), { color });
    }
    if (d.baseline) Lab.text(ctx, `b(s${s + 1}) = ${Lab.fmt(d.b[s])}`, x0 + w / 2, top + 48, { align: "center", color: colors.purple });
    const e = d.expected_push[s];
    Lab.text(ctx, `expected push Σ_a π(a|s)·g = (${Lab.fmt(e[0])}, ${Lab.fmt(e[1])})`, x0 + w / 2, 322,
      { align: "center", color: colors.muted });
  }

  function draw() {
    const ctx = Lab.context(canvas);
    const d = view.data;
    if (!d) { Lab.rendered(canvas); return; }
    panel(ctx, d, 0, 40);
    panel(ctx, d, 1, 520);
    ctx.strokeStyle = Lab.colors.grid; ctx.beginPath(); ctx.moveTo(480, 20); ctx.lineTo(480, 330); ctx.stroke();
    const longest = Math.max(...d.samples.map((x) => Math.abs(x.push[x.action])));
    Lab.text(ctx, `arrow length ∝ push on the action's own logit (longest: ${Lab.fmt(longest)})`, 940, 352,
      { align: "right", color: Lab.colors.muted });
    const printed = d.lecture_printed_std;
    const std = `std of the four gradient weights (torch.std): ${d.std.toFixed(3)} ≈ ${d.std.toFixed(2)}`;
    Lab.text(ctx, std, 40, 352, { font: "bold 14px sans-serif", color: d.baseline ? Lab.colors.blue : Lab.colors.orange });
    const other = d.baseline
      ? `without a baseline: ${d.std_no_baseline.toFixed(3)}. The lecture prints ${printed.no_baseline} → ${printed.baseline}.`
      : `The lecture prints ${printed.no_baseline} here; torch.std of these rewards is ${d.std_no_baseline.toFixed(3)} (n−1) and ${d.std_population.toFixed(3)} (n).`;
    Lab.text(ctx, other, 40, 372, { color: Lab.colors.muted });
    $("base-readout").textContent = d.baseline
      ? `With the baseline the weights are [${d.weights.map(Lab.fmt).join(", ")}], std ${d.std.toFixed(3)} (lecture: ${printed.baseline}). The expected push is unchanged: a baseline does not bias the gradient.`
      : `Without a baseline the weights are the raw rewards [${d.weights.map(Lab.fmt).join(", ")}], std ${d.std.toFixed(3)}. The lecture prints ${printed.no_baseline}, which no standard deviation of these four rewards gives.`;
    Lab.rendered(canvas);
  }

  $("base-lecture").addEventListener("click", () => {
    for (const [k, v] of Object.entries(LECTURE)) $(`base-${k}`).value = v;
    load();
  });
  Lab.on(["base-on", "base-r00", "base-r01", "base-r10", "base-r11", "base-b0", "base-b1"], "change", load);
  window.labBaseline = view;
  load();
})();

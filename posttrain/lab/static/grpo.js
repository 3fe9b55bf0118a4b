// Canvas 5: the library's trainer, live, on the sorting task; curves and sampled responses.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("grpo-canvas");
  const view = { data: null, playing: false, busy: false };

  function settings() {
    return {
      delta: $("grpo-delta").value,
      loss: $("grpo-loss").value,
      reward: $("grpo-reward").value,
      epochs: Number($("grpo-epochs").value),
      lr: Number($("grpo-lr").value),
    };
  }

  async function call(path, params) {
    view.busy = true;
    const data = await Lab.guard("grpo", () => Lab.api(path, params));
    view.busy = false;
    if (data) { view.data = data; draw(); }
    return data;
  }

  async function loop() {
    while (view.playing) {
      const data = await call("/api/grpo/step", { count: 1 });
      if (!data) { pause(); break; }
      await new Promise((r) => setTimeout(r, 30)); // let the page breathe between steps
    }
  }

  function play() {
    if (view.playing) { pause(); return; }
    view.playing = true;
    $("grpo-play").textContent = "Pause";
    loop();
  }

  function pause() {
    view.playing = false;
    $("grpo-play").textContent = "Play";
  }

  // A small line chart of one metric of the history.
  function chart(ctx, box, key, title, color, yr) {
    const h = view.data.history;
    const xs = h.map((r) => r.step), ys = h.map((r) => r[key]);
    const xr = [0, Math.max(10, xs.length ? xs[xs.length - 1] : 0)];
    const map = Lab.frame(ctx, box, xr, yr || Lab.range(ys, [-1, 1]), { x: "step", y: title });
    Lab.line(ctx, map, xs, ys, color, 2);
    if (ys.length) {
      const last = ys[ys.length - 1];
      Lab.text(ctx, `${Lab.fmt(last)}`, box.x + box.w - 4, box.y - 12, { align: "right", color, font: "bold 13px sans-serif" });
    }
  }

  function samples(d) {
    const rows = d.samples.slice(0, 4).map((g) => {
      const cells = g.responses.map((r) => {
        const shade = r.reward === null ? "#eee" : `hsl(${Math.round(120 * r.reward)}, 60%, 85%)`;
        return `<td style="background:${shade}" title="advantage ${Lab.fmt(r.advantage)}"><span class="mono">${Lab.escape(r.response) || "∅"}</span>` +
          `<br><small>R ${Lab.fmt(r.reward)} · A ${Lab.fmt(r.advantage)}</small></td>`;
      }).join("");
      return `<tr><th class="mono">${Lab.escape(g.prompt)}</th>${cells}</tr>`;
    }).join("");
    $("grpo-samples").innerHTML = d.samples.length
      ? `<div>Responses sampled at step ${d.step} (first 4 prompts; colour = reward, A = advantage):</div><table>${rows}</table>`
      : "<div>No step taken yet: press Step or Play.</div>";
  }

  function draw() {
    const ctx = Lab.context(canvas);
    const d = view.data;
    if (!d) { Lab.rendered(canvas); return; }
    chart(ctx, { x: 60, y: 30, w: 380, h: 220 }, "rollout/reward_mean", "mean reward", Lab.colors.green, [0, 1]);
    chart(ctx, { x: 540, y: 30, w: 380, h: 220 }, "loss/policy", "policy loss", Lab.colors.purple);
    const s = d.settings;
    const last = d.history.length ? d.history[d.history.length - 1] : null;
    $("grpo-readout").textContent = `Step ${d.step}: delta mode ${s.delta} (advantage "${d.delta_modes[s.delta]}"), ` +
      `loss ${s.loss}, K = ${s.epochs}, lr ${s.lr}, reward ${s.reward}` +
      (last ? `; mean reward ${Lab.fmt(last["rollout/reward_mean"])}, clip fraction ${Lab.fmt(last["policy/clipfrac"])}` : "") +
      `. Run directory: ${d.run_dir}`;
    samples(d);
    Lab.rendered(canvas);
  }

  async function reset() {
    pause();
    while (view.busy) await new Promise((r) => setTimeout(r, 20));
    await call("/api/grpo/reset", { settings: settings() });
  }

  $("grpo-play").addEventListener("click", play);
  $("grpo-step").addEventListener("click", () => { if (!view.busy) call("/api/grpo/step", { count: 1 }); });
  $("grpo-reset").addEventListener("click", reset);
  Lab.on(["grpo-delta", "grpo-loss", "grpo-reward", "grpo-epochs", "grpo-lr"], "change", reset);
  window.labGrpo = view;
  call("/api/grpo/state", {});
})();

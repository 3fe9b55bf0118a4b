// Canvas 1: a response sampled token by token; each step a (state, action, reward) triple.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("traj-canvas");
  const view = { data: null, k: 0, timer: null };

  async function sample() {
    stop();
    const data = await Lab.guard("traj", () => Lab.api("/api/trajectory", {
      model: $("traj-model").value.trim(),
      prompt: $("traj-prompt").value.trim(),
      temperature: Number($("traj-temp").value),
      seed: Number($("traj-seed").value),
    }));
    if (data) { view.data = data; view.k = 0; }
    draw();
  }

  function step() {
    if (!view.data) return;
    if (view.k < view.data.steps.length) view.k += 1;
    if (view.k >= view.data.steps.length) stop();
    draw();
  }

  function play() {
    if (view.timer) { stop(); return; }
    if (!view.data) return;
    if (view.k >= view.data.steps.length) view.k = 0;
    $("traj-play").textContent = "Pause";
    view.timer = setInterval(step, 700);
    draw();
  }

  function stop() {
    if (view.timer) clearInterval(view.timer);
    view.timer = null;
    $("traj-play").textContent = "Play";
  }

  // Token boxes in a row; returns the x after the last box.
  function tokens(ctx, list, x, y, style) {
    for (const tok of list) {
      const label = tok.text === " " ? "␣" : tok.text;
      const w = Math.max(24, ctx.measureText(label).width + 12);
      ctx.fillStyle = tok.fill; ctx.fillRect(x, y - 14, w, 28);
      ctx.strokeStyle = tok.stroke || "#9aa4b2"; ctx.lineWidth = tok.bold ? 2.5 : 1;
      ctx.strokeRect(x, y - 14, w, 28);
      Lab.text(ctx, label, x + w / 2, y, { align: "center", font: "14px 'DejaVu Sans Mono', monospace" });
      x += w + 4;
      if (x > canvas.width - 40 && style === "wrap") break;
    }
    return x;
  }

  function draw() {
    const ctx = Lab.context(canvas);
    const d = view.data;
    if (!d) { Lab.text(ctx, "Press Sample.", 20, 30); Lab.rendered(canvas); return; }
    const T = d.steps.length, k = view.k, done = k >= T;
    const cur = done ? null : d.steps[k];
    // State s_k: prompt tokens (grey) and the response so far (blue); then the action a_k.
    Lab.text(ctx, done ? `final state s_${T}` : `state s_${k}`, 16, 24, { color: Lab.colors.muted });
    const state = d.prompt_tokens.map((t) => ({ text: t, fill: "#eceff3" }))
      .concat(d.steps.slice(0, k).map((s) => ({ text: s.action.text, fill: "#dbe7fb", stroke: Lab.colors.blue })));
    let x = tokens(ctx, state, 16, 54, "wrap");
    if (cur) {
      Lab.text(ctx, "+", x + 4, 54, { font: "18px sans-serif" });
      tokens(ctx, [{ text: cur.action.text, fill: "#fde7d3", stroke: Lab.colors.orange, bold: true }], x + 20, 54);
      Lab.text(ctx, `action a_${k}`, x + 20, 24, { color: Lab.colors.orange });
    }
    // The policy at s_k: the chosen token and the top alternatives.
    const box = { x: 70, y: 100, w: 520, h: 190 };
    if (cur) {
      Lab.text(ctx, `π(· | s_${k}) at T = ${d.temperature}: top ${cur.top.length} tokens`, box.x, box.y - 10);
      const bw = box.h / cur.top.length;
      const pmax = Math.max(...cur.top.map((t) => t.prob), cur.action.prob);
      cur.top.forEach((t, i) => {
        const y = box.y + i * bw + 4, w = (t.prob / pmax) * (box.w - 120);
        const chosen = t.id === cur.action.id;
        ctx.fillStyle = chosen ? Lab.colors.orange : "#b7c3d6";
        ctx.fillRect(box.x, y, w, bw - 8);
        Lab.text(ctx, JSON.stringify(t.text), box.x - 8, y + (bw - 8) / 2, { align: "right", font: "13px 'DejaVu Sans Mono', monospace" });
        Lab.text(ctx, t.prob.toFixed(3), box.x + w + 6, y + (bw - 8) / 2);
      });
      if (!cur.top.some((t) => t.id === cur.action.id)) {
        Lab.text(ctx, `chosen (not in top): ${JSON.stringify(cur.action.text)} p = ${cur.action.prob.toFixed(4)}`,
          box.x, box.y + box.h + 8, { color: Lab.colors.orange });
      }
      Lab.text(ctx, `chosen a_${k} = ${JSON.stringify(cur.action.text)}`, 640, 120, { color: Lab.colors.orange, font: "bold 14px sans-serif" });
      Lab.text(ctx, `π(a_${k} | s_${k}) = ${cur.action.prob.toFixed(4)}`, 640, 146);
      Lab.text(ctx, `log π = ${cur.action.logprob.toFixed(3)}`, 640, 170);
      Lab.text(ctx, `entropy of π(· | s_${k}) = ${cur.entropy.toFixed(2)} nats`, 640, 194);
      Lab.text(ctx, `reward r_${k} = ${k === T - 1 && d.reward !== null ? d.reward.toFixed(3) + " (verifier)" : "0"}`, 640, 226);
    } else {
      Lab.text(ctx, `response: ${JSON.stringify(d.response)} (stopped by ${d.finish})`, box.x, 120);
      Lab.text(ctx, `log π(response | prompt) = Σ_t log π(a_t | s_t) = ${d.sequence_logprob.toFixed(3)}`, box.x, 150);
      Lab.text(ctx, d.reward === null ? d.status : `verifier: ${d.status}, R = ${d.reward.toFixed(3)}`,
        box.x, 180, { font: "bold 15px sans-serif" });
    }
    // Rewards r_0 .. r_{T-1}: 0 until the last step, then the verifier's.
    const ry = 330, cw = Math.min(70, (canvas.width - 140) / Math.max(T, 1));
    Lab.text(ctx, "reward r_t", 16, ry + 14, { color: Lab.colors.muted });
    d.steps.forEach((s, t) => {
      const x0 = 110 + t * cw, shown = t < k || (t === k && !done);
      const last = t === T - 1;
      ctx.fillStyle = !shown ? "#f4f5f7" : last && s.reward > 0 ? "#d5f0dc" : "#eef1f5";
      ctx.fillRect(x0, ry, cw - 4, 28);
      ctx.strokeStyle = t === k && !done ? Lab.colors.orange : "#c9cfd8";
      ctx.strokeRect(x0, ry, cw - 4, 28);
      Lab.text(ctx, `t=${t}`, x0 + (cw - 4) / 2, ry - 9, { align: "center", color: Lab.colors.muted });
      if (shown) Lab.text(ctx, last && d.reward !== null ? s.reward.toFixed(2) : "0", x0 + (cw - 4) / 2, ry + 14, { align: "center" });
    });
    $("traj-readout").textContent = done
      ? `Done: ${T} steps, response "${d.response}", reward ${d.reward === null ? "n/a" : d.reward.toFixed(3)} (${d.status}). Model: ${d.model}.`
      : `Step ${k + 1} of ${T}: action "${cur.action.text}" with probability ${cur.action.prob.toFixed(3)}; reward so far 0. Model: ${d.model}.`;
    Lab.rendered(canvas);
  }

  async function init() {
    const info = await Lab.guard("traj", () => Lab.api("/api/info", {}));
    if (info) {
      $("traj-model").value = info.default_model;
      $("traj-models").innerHTML = info.model_suggestions.map((m) => `<option value="${Lab.escape(m)}">`).join("");
    }
    $("traj-temp-val").textContent = Number($("traj-temp").value).toFixed(1);
    await sample();
  }

  $("traj-sample").addEventListener("click", () => { $("traj-seed").value = Number($("traj-seed").value) + 1; sample(); });
  $("traj-step").addEventListener("click", () => { stop(); step(); });
  $("traj-play").addEventListener("click", play);
  $("traj-reset").addEventListener("click", () => { stop(); view.k = 0; draw(); });
  $("traj-temp").addEventListener("input", () => { $("traj-temp-val").textContent = Number($("traj-temp").value).toFixed(1); });
  Lab.on(["traj-temp", "traj-prompt", "traj-model", "traj-seed"], "change", sample);
  window.labTrajectory = view;
  init();
})();

// Canvas 6: a run directory's metrics and its logged rollouts, grouped by prompt.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("runs-canvas");
  const view = { run: null, rollouts: null };

  async function open() {
    const dir = $("runs-dir").value.trim();
    if (!dir) return;
    const run = await Lab.guard("runs", () => Lab.api("/api/runs/open", { dir }));
    if (!run) return;
    view.run = run;
    const keys = Object.keys(run.metrics).sort();
    const prefer = ["rollout/reward_mean", "loss/policy"].find((k) => keys.includes(k)) || keys[0];
    $("runs-metric").innerHTML = keys.map((k) => `<option${k === prefer ? " selected" : ""}>${Lab.escape(k)}</option>`).join("");
    $("runs-step").innerHTML = run.rollout_steps.map((s) => `<option value="${s.step}">${s.step} (${s.count})</option>`).join("");
    if (run.rollout_steps.length) $("runs-step").value = String(run.rollout_steps[run.rollout_steps.length - 1].step);
    draw();
    await rollouts();
  }

  async function rollouts() {
    if (!view.run || !view.run.rollout_steps.length) {
      $("runs-rollouts").innerHTML = view.run ? "<div>This run logged no rollouts.</div>" : "";
      return;
    }
    const data = await Lab.guard("runs", () => Lab.api("/api/runs/rollouts", { dir: view.run.dir, step: Number($("runs-step").value) }));
    if (data) { view.rollouts = data; table(data); }
  }

  // Background for a per-token number: log-probs from red (unlikely) to white (certain),
  // advantages green (+) / red (−).
  function cell(v, kind) {
    if (v === null || v === undefined) return "<td>–</td>";
    let bg = "#fff";
    if (kind === "lp") bg = `hsl(0, 70%, ${Math.round(100 - Math.min(1, -v / 5) * 30)}%)`;
    if (kind === "adv" && v !== 0) bg = `hsl(${v > 0 ? 120 : 0}, 60%, ${Math.round(100 - Math.min(1, Math.abs(v) / 2) * 25)}%)`;
    return `<td style="background:${bg}">${Lab.fmt(v)}</td>`;
  }

  function table(data) {
    const groups = data.groups.map((g) => {
      const rewards = g.rollouts.map((r) => r.reward).filter((r) => r !== null);
      const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
      const body = g.rollouts.map((r, i) => {
        const head = `<tr><th>#${i}</th>${r.token_text.map((t) => `<th class="mono">${Lab.escape(JSON.stringify(t))}</th>`).join("")}</tr>`;
        const row = (name, vals, kind) => `<tr><th>${name}</th>${(vals || r.tokens.map(() => null)).map((v) => cell(v, kind)).join("")}</tr>`;
        return `<div class="rollout"><div><span class="mono">${Lab.escape(r.response)}</span> — reward <b>${Lab.fmt(r.reward)}</b></div>` +
          `<table class="tokens">${head}${row("log π", r.logprobs, "lp")}${row("log π_ref", r.ref_logprobs, "lp")}${row("advantage", r.advantages, "adv")}</table></div>`;
      }).join("");
      return `<div class="group"><h4>prompt <span class="mono">${Lab.escape(g.prompt)}</span> · ${g.rollouts.length} rollouts · mean reward ${Lab.fmt(mean)}</h4>${body}</div>`;
    }).join("");
    $("runs-rollouts").innerHTML = `<div>Step ${data.step}: ${data.groups.length} prompts` +
      (data.decoded ? "" : " (no tokenizer found: token ids shown)") + `</div>${groups}`;
  }

  function draw() {
    const ctx = Lab.context(canvas);
    const run = view.run;
    if (!run) { Lab.text(ctx, "Open a run directory.", 20, 30); Lab.rendered(canvas); return; }
    const key = $("runs-metric").value;
    const s = run.metrics[key];
    const box = { x: 70, y: 30, w: 840, h: 190 };
    if (!s) { Lab.text(ctx, "This run has no metrics.", 20, 30); Lab.rendered(canvas); return; }
    const map = Lab.frame(ctx, box, Lab.range(s.step, [0, 1], 0.02), Lab.range(s.value, [0, 1]), { x: "step", y: key });
    Lab.line(ctx, map, s.step, s.value, Lab.colors.blue, 2);
    for (let i = 0; i < s.step.length; i++) {
      if (s.value[i] === null) continue;
      ctx.fillStyle = Lab.colors.blue;
      ctx.beginPath(); ctx.arc(map.sx(s.step[i]), map.sy(s.value[i]), 2.5, 0, 2 * Math.PI); ctx.fill();
    }
    $("runs-readout").textContent = `${run.dir}: ${Object.keys(run.metrics).length} metrics, ` +
      `${run.rollout_steps.length} steps with rollouts` + (run.has_final ? ", final/ model present." : ".");
    Lab.rendered(canvas);
  }

  async function init() {
    const info = await Lab.guard("runs", () => Lab.api("/api/info", {}));
    if (info && info.run_dir) { $("runs-dir").value = info.run_dir; await open(); } else draw();
  }

  $("runs-open").addEventListener("click", open);
  $("runs-dir").addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  $("runs-grpo").addEventListener("click", async () => {
    const st = window.labGrpo && window.labGrpo.data;
    if (st && st.run_dir) { $("runs-dir").value = st.run_dir; await open(); }
  });
  $("runs-metric").addEventListener("change", draw);
  $("runs-step").addEventListener("change", rollouts);
  window.labRuns = view;
  init();
})();

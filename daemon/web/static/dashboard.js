// The admin dashboard: polls api/state every two seconds; retry is a same-origin POST.
"use strict";
(() => {
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function age(seconds) {
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function row(cells) {
    const tr = el("tr");
    for (const cell of cells) {
      const td = cell instanceof Node ? el("td") : el("td", "", cell);
      if (cell instanceof Node) td.append(cell);
      tr.append(td);
    }
    return tr;
  }

  async function retry(job, button) {
    button.disabled = true;
    button.textContent = "queuing…";
    try {
      const response = await fetch("api/retry/" + job, { method: "POST", credentials: "same-origin" });
      const body = await response.json();
      button.textContent = response.ok ? "queued" : "refused: " + (body.error || response.status);
    } catch (err) {
      button.textContent = "failed: " + err;
      button.disabled = false;
    }
  }

  function render(s) {
    const live = s.live || {};
    const ready = $("ready");
    ready.textContent = live.ready ? "ready" : "not ready";
    ready.className = "pill " + (live.ready ? "ok" : "bad");
    $("reasons").textContent = (live.reasons || []).join("; ");

    const counts = $("counts");
    counts.replaceChildren();
    for (const [state, n] of Object.entries(s.counts || {})) {
      const card = el("div", "card");
      card.id = "count-" + state;
      card.append(el("b", "", n), el("span", "", state));
      counts.append(card);
    }
    const queued = (s.counts || {}).queued || 0;
    $("queue").textContent = queued
      ? `${queued} waiting, the oldest for ${age(s.oldest_queued_seconds || 0)}`
      : "nothing waiting";
    // Photos held back by trouble that can pass, each with its reason and its next try.
    const waiting = $("waiting");
    const rows = waiting.querySelector("tbody");
    rows.replaceChildren();
    for (const w of s.waiting || []) {
      const tr = row([w.source, w.style, w.kind || "", w.error || "", `in ${age(w.retry_in || 0)}`]);
      tr.children[3].className = "error";
      rows.append(tr);
    }
    waiting.hidden = (s.waiting || []).length === 0;

    const workers = $("workers").querySelector("tbody");
    workers.replaceChildren();
    const running = s.running || [];
    const what = running.length
      ? running.map((j) => `${j.source} [${j.style}]`).join(", ")
      : "idle";
    const progress = el("div");
    for (const j of running) {
      const bar = el("div", "bar");
      const fill = el("div");
      fill.style.width = (j.percent || 0) + "%";
      bar.append(fill);
      progress.append(el("div", "", `${j.percent || 0}% · scale ${j.scale}/${j.scales} · ${Math.round(j.seconds || 0)} s`), bar);
    }
    workers.append(row([live.device || "unknown", live.precision || "", what, progress]));

    const bars = $("per-hour");
    bars.replaceChildren();
    const perHour = (s.per_hour || {}).counts || [];
    const top = Math.max(1, ...perHour);
    perHour.forEach((n, i) => {
      const bar = el("div");
      bar.style.height = (100 * n) / top + "%";
      bar.title = `${n} photo(s), ${perHour.length - 1 - i} h ago`;
      bars.append(bar);
    });

    const failures = $("failures").querySelector("tbody");
    failures.replaceChildren();
    for (const f of s.failures || []) {
      const button = el("button", "retry", "retry");
      button.type = "button";
      button.dataset.job = f.job;
      button.addEventListener("click", () => retry(f.job, button));
      const tr = row([f.source, f.style, f.kind || "", f.error || "", f.attempts, button]);
      tr.dataset.job = f.job;
      tr.children[3].className = "error";
      failures.append(tr);
    }
    $("no-failures").hidden = (s.failures || []).length > 0;
  }

  async function tick() {
    try {
      const response = await fetch("api/state", { cache: "no-store", credentials: "same-origin" });
      if (!response.ok && response.status !== 503) throw new Error(String(response.status));
      $("offline").hidden = true;
      render(await response.json());
    } catch (err) {
      $("offline").hidden = false;
    }
    setTimeout(tick, POLL_MS);
  }
  tick();
})();

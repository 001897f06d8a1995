// The booth page: polls api/state every second and shows the newest artwork, the photos being
// stylized now (with their progress) and a strip of recent ones. Polling, not a held
// connection, so that it rides out restarts of the service and of the web process alike.
"use strict";
(() => {
  const POLL_MS = 1000;
  const PIN_MS = 20000; // a picture chosen in the strip stays this long, then the newest again
  const $ = (id) => document.getElementById(id);
  const showSources = document.body.dataset.showSources === "true";
  const query = new URLSearchParams();
  const page = new URLSearchParams(location.search);
  for (const key of ["folder", "rule"]) {
    if (page.get(key)) query.set(key, page.get(key));
  }
  const stateUrl = "api/state" + (query.toString() ? "?" + query : "");
  let pinned = null;
  let pinnedUntil = 0;
  let photoHidden = localStorage.getItem("stylewatch.photoHidden") === "1";
  let stripKey = "";

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setSrc(img, src) {
    if (img.getAttribute("src") !== src) img.setAttribute("src", src);
  }

  function renderPlaceholders(running) {
    const box = $("placeholders");
    const seen = new Set();
    for (const job of running) {
      const id = "placeholder-" + job.job;
      seen.add(id);
      let card = document.getElementById(id);
      if (!card) {
        card = el("div", "placeholder");
        card.id = id;
        card.dataset.job = job.job;
        if (showSources && job.photo) {
          const img = el("img");
          img.alt = "";
          img.src = job.photo;
          card.append(img);
        }
        const text = el("div", "text");
        text.append(el("div", "label", "Painting " + job.name + " in " + job.style + "…"));
        text.append(el("div", "detail"));
        const bar = el("div", "bar");
        bar.append(el("div"));
        text.append(bar);
        card.append(text);
        box.append(card);
      }
      const pct = Math.max(0, Math.min(100, job.percent || 0));
      card.querySelector(".detail").textContent =
        `scale ${job.scale || 1} of ${job.scales || 1} · ${pct.toFixed(0)}% · ${Math.round(job.seconds || 0)} s`;
      card.querySelector(".bar > div").style.width = pct + "%";
      card.dataset.percent = pct;
    }
    for (const card of [...box.children]) {
      if (!seen.has(card.id)) card.remove();
    }
  }

  function renderHero(recent, painting) {
    if (pinned !== null && Date.now() > pinnedUntil) pinned = null;
    const chosen = recent.find((a) => a.job === pinned) || recent[0];
    $("empty").hidden = Boolean(chosen) || painting;
    $("hero").hidden = !chosen;
    $("toggle-photo").hidden = !(chosen && showSources);
    $("photo-panel").hidden = !(chosen && showSources && !photoHidden);
    if (!chosen) return;
    setSrc($("artwork"), chosen.artwork);
    $("hero").dataset.job = chosen.job;
    $("caption").textContent = chosen.name + " · " + chosen.style;
    if (showSources && chosen.photo) setSrc($("photo"), chosen.photo);
    for (const img of $("strip").children) {
      img.classList.toggle("current", Number(img.dataset.job) === chosen.job);
    }
  }

  function renderStrip(recent) {
    const key = recent.map((a) => a.job).join(",");
    if (key === stripKey) return;
    stripKey = key;
    const strip = $("strip");
    strip.replaceChildren();
    for (const art of recent) {
      const img = el("img");
      img.src = art.artwork;
      img.alt = art.name;
      img.dataset.job = art.job;
      img.addEventListener("click", () => {
        pinned = art.job;
        pinnedUntil = Date.now() + PIN_MS;
        renderHero(recent, false);
      });
      strip.append(img);
    }
  }

  function render(state) {
    const recent = state.recent || [];
    const running = state.running || [];
    renderPlaceholders(running);
    renderStrip(recent);
    renderHero(recent, running.length > 0);
    const live = state.live || {};
    const away = $("offline");
    away.hidden = Boolean(live.ready);
    away.textContent = live.ready ? "" : "stylewatch is starting…";
  }

  $("toggle-photo").addEventListener("click", () => {
    photoHidden = !photoHidden;
    localStorage.setItem("stylewatch.photoHidden", photoHidden ? "1" : "0");
    $("photo-panel").hidden = photoHidden;
  });

  async function tick() {
    try {
      const response = await fetch(stateUrl, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok && response.status !== 503) throw new Error(String(response.status));
      render(await response.json());
    } catch (err) {
      $("offline").hidden = false;
      $("offline").textContent = "reconnecting…";
    }
    setTimeout(tick, POLL_MS);
  }
  tick();
})();

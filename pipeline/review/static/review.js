// allray review: corrections by click and keyboard. The server renders everything; this script only
// POSTs a cell's new class and puts the server's counts back in the page.
(function () {
  "use strict";
  const root = document.getElementById("patient");
  if (!root || root.dataset.readonly === "yes") return;
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const patient = root.dataset.patient;
  const keys = {};
  document.querySelectorAll("#toolbar .move").forEach((b) => { keys[b.dataset.keyHint] = b.dataset.cls; });
  const history = [];  // this page's own changes, for undo: {key, prev}
  let selected = null;

  function showError(text) {
    const el = document.getElementById("js-error");
    el.textContent = text;
    el.hidden = !text;
  }
  function select(tile) {
    if (selected) selected.classList.remove("selected");
    selected = tile;
    if (tile) { tile.classList.add("selected"); tile.focus(); }
  }
  function tileOf(key) { return document.querySelector('.cell[data-key="' + CSS.escape(key) + '"]'); }
  function bump(section, by) {
    const n = section.querySelector("h2 .n");
    n.textContent = String(parseInt(n.textContent, 10) + by);
  }
  async function send(tile, cls, undo) {
    const reviewer = document.getElementById("reviewer").value.trim();
    if (!reviewer) { showError("Enter your name (reviewer) first."); document.getElementById("reviewer").focus(); return null; }
    const body = new URLSearchParams({ patient: patient, key: tile.dataset.key, cls: cls, reviewer: reviewer,
                                       undo: undo ? "1" : "" });
    const resp = await fetch("/cell", { method: "POST", body: body, headers: { "X-CSRF-Token": csrf },
                                        credentials: "same-origin" });
    const data = await resp.json().catch(() => ({ error: "HTTP " + resp.status }));
    if (!resp.ok) { showError(data.error || ("HTTP " + resp.status)); return null; }
    showError("");
    document.getElementById("counts").innerHTML = data.counts_html;
    const rev = document.getElementById("revision");
    if (rev) rev.value = data.revision;
    const from = tile.closest(".gallery");
    const to = document.getElementById(data.unsure ? "g-unsure" : "g-" + data.cls);
    tile.dataset.cls = data.cls;
    tile.classList.toggle("decided", data.decided);
    if (to && to !== from) { bump(from, -1); bump(to, 1); to.querySelector(".tiles").prepend(tile); }
    return data;
  }
  function nextTile(tile) {
    const all = Array.from(document.querySelectorAll(".cell"));
    const i = all.indexOf(tile);
    return all[i + 1] || all[i - 1] || null;
  }
  async function move(cls) {
    const tile = selected;
    if (!tile) { showError("Select a cell first (click it)."); return; }
    const following = nextTile(tile);
    const prev = tile.classList.contains("decided") ? tile.dataset.cls : "";
    const data = await send(tile, cls, false);
    if (!data) return;
    history.push({ key: tile.dataset.key, prev: prev });
    select(following && following !== tile ? following : tile);
  }
  async function undo() {
    const last = history.pop();
    if (!last) { showError("Nothing to undo on this page."); return; }
    const tile = tileOf(last.key);
    if (tile && await send(tile, last.prev, true)) select(tile);
  }
  document.addEventListener("click", (ev) => {
    const tile = ev.target.closest(".cell");
    if (tile) { select(tile); return; }
    const btn = ev.target.closest("#toolbar button");
    if (!btn) return;
    if (btn.id === "undo") undo();
    else if (btn.id === "confirm") { if (selected) move(selected.dataset.cls); }
    else move(btn.dataset.cls);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, textarea") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toLowerCase();
    if (k in keys) { ev.preventDefault(); move(keys[k]); }
    else if (k === "c" || k === "enter") { if (selected) { ev.preventDefault(); move(selected.dataset.cls); } }
    else if (k === "u") { ev.preventDefault(); undo(); }
    else if (k === "arrowright" || k === "arrowleft") {
      const all = Array.from(document.querySelectorAll(".cell"));
      const i = all.indexOf(selected);
      const j = k === "arrowright" ? i + 1 : Math.max(0, i - 1);
      if (all[j]) { ev.preventDefault(); select(all[j]); }
    }
  });
  document.addEventListener("focusin", (ev) => { const t = ev.target.closest(".cell"); if (t && t !== selected) select(t); });
})();

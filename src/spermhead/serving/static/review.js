// Review page: step through the server's review set (GET /api/review). Images come from
// /api/review/image/<index>: by index only, the server never opens a client-given path.
"use strict";

let all = [];      // every item
let view = [];     // the items shown (all, or errors only)
let pos = 0;       // position in view
let classes = [];
let version = "";  // the review set's fingerprint (GET /api/review)

const $ = (id) => document.getElementById(id);

function applyFilter(keepItemIndex) {
  const errorsOnly = $("errors-only").checked;
  view = errorsOnly ? all.filter((it) => it.correct === false) : all;
  if (keepItemIndex !== undefined) {
    const at = view.findIndex((it) => it.index >= keepItemIndex);
    pos = at >= 0 ? at : Math.max(0, view.length - 1);
  } else {
    pos = 0;
  }
  render();
}

function running() {
  // Accuracy over every item up to the current one, whatever the filter shows: over the errors
  // alone it would always read 0%.
  const seen = all.slice(0, all.indexOf(view[pos]) + 1).filter((it) => it.correct !== null);
  const right = seen.filter((it) => it.correct).length;
  return seen.length ? { text: pct(right / seen.length), k: `running accuracy · ${right}/${seen.length} so far` }
    : { text: "–", k: "running accuracy" };
}

function render() {
  const empty = $("empty");
  const layout = $("layout");
  if (!view.length) {
    layout.hidden = true;
    empty.hidden = false;
    empty.textContent = all.length ? "No errors: every prediction in this set is right." : "The review set is empty.";
    $("stat-running").textContent = "–";
    return;
  }
  empty.hidden = true;
  layout.hidden = false;
  const it = view[pos];
  $("pos").textContent = `${pos + 1} / ${view.length}`;
  $("prev").disabled = pos === 0;
  $("next").disabled = pos === view.length - 1;

  const box = $("image-box");
  if (it.has_image) {
    // the set's version in the address: a cached image of another set's item at this index is never shown
    const img = el("img", { src: `api/review/image/${it.index}?v=${version}`, alt: it.name, id: "review-image" });
    // a file gone since the set was scored, or over the pixel limit: the server's reason, not a broken icon
    img.addEventListener("error", async () => {
      const r = await fetch(img.src).catch(() => null);
      const why = r ? await errorText(r) : "image not reachable";
      if (img.isConnected) box.replaceChildren(el("div", { class: "noimg", text: why }));  // still the item shown
    });
    box.replaceChildren(img);
  } else {
    box.replaceChildren(el("div", { class: "noimg", text: "image not available" }));
  }
  $("item-name").textContent = it.id;
  $("item-name").title = it.id;
  const t = $("true-label");
  t.textContent = it.true;
  const p = $("pred-label");
  p.textContent = it.pred ?? "not predicted";
  p.className = "chip " + (it.correct === null ? "neutral" : it.correct ? "right" : "wrong");
  t.className = "chip " + (it.correct === null ? "neutral" : it.correct ? "right" : "wrong");
  $("pred-conf").textContent = it.confidence != null ? pct(it.confidence) : "";
  // said in words too, not by colour alone
  $("verdict-mark").textContent = it.correct === null ? "" : it.correct ? "✓ right" : "✗ wrong";
  $("bars").replaceChildren(it.pred ? probabilityBars(it.probabilities, classes, it.pred) : "");
  $("item-error").textContent = it.error || "";
  $("item-seen").hidden = it.seen !== true;
  const r = running();
  $("stat-running").textContent = r.text;
  $("stat-running-k").textContent = r.k;
}

function step(delta) {
  const next = Math.min(view.length - 1, Math.max(0, pos + delta));
  if (next !== pos) { pos = next; render(); }
}

$("prev").addEventListener("click", () => step(-1));
$("next").addEventListener("click", () => step(1));
$("errors-only").addEventListener("change", () => applyFilter(view[pos] ? view[pos].index : 0));
document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement && e.target.type !== "checkbox") return;
  if (e.altKey || e.ctrlKey || e.metaKey) return; // the browser's own (Alt+Left: back; Ctrl+E)
  if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
  else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
  else if (e.key === "e") { $("errors-only").checked = !$("errors-only").checked; applyFilter(view[pos] ? view[pos].index : 0); }
});

async function load() {
  loadModelInfo();
  const r = await fetch("api/review").catch(() => null);
  if (r === null) {  // the server is gone or unreachable: say so rather than sit at "–"
    $("empty").hidden = false;
    $("empty").textContent = "The server could not be reached; reload the page when it is back.";
    return;
  }
  if (!r.ok) {
    $("empty").hidden = false;
    $("empty").textContent = await errorText(r);
    return;
  }
  const data = await r.json();
  all = data.items;
  classes = data.classes;
  version = data.version || "";
  const what = data.kind === "predictions" ? "predictions from" : "labelled folder, predicted by this model:";
  $("source").textContent = `${data.count} images · ${what} ${data.source}`;
  if (data.note) { $("note").hidden = false; $("note").textContent = data.note; }
  $("stat-overall").textContent = data.accuracy != null ? pct(data.accuracy) : "–";
  if (data.seen && data.accuracy_unseen != null) {
    // the honest figure: images the model trained on are recalled, not predicted
    $("stat-overall-k").textContent = `overall accuracy · ${pct(data.accuracy_unseen)} on the ${data.unseen} not seen in training`;
  }
  $("stat-errors").textContent = String(all.filter((it) => it.correct === false).length);
  applyFilter();
}

load();

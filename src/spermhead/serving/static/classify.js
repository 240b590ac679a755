// Classify page: files go to POST /api/predict a few at a time; each gets a card.
"use strict";

const BATCH = 8; // files per request: one slow batch never holds back the whole drop
const cards = document.getElementById("cards");
const statusLine = document.getElementById("status");
const dropzone = document.getElementById("dropzone");
const input = document.getElementById("file-input");
const gradcamBox = document.getElementById("gradcam");
const samplePanel = document.getElementById("sample");
let classes = [];
let minHeads = 10;
const predicted = []; // every head classified on this page: together, one sample
let headless = 0;     // images on this page where no head was found
let classifiedOnPage = 0, failedOnPage = 0; // the status line counts the page, as the shares do
let sampleNumber = 0; // New sample starts the next; answers to requests sent before it are dropped

function figure(src, caption, alt) {
  const img = el("img", { src, alt });
  return el("figure", {}, img, el("figcaption", { text: caption }));
}

// Each drop or selection goes on top of the page, its files in the order they were given, so
// the cards read like the list of files a lab has on its slide sheet.
function pendingCard(file, group) {
  const card = el("article", { class: "card", "data-name": file.name },
    el("h3", { text: file.name, title: file.name }),
    el("div", { class: "status-line", text: "classifying…" }));
  group.append(card);
  return card;
}

function fillError(card, file, message) {
  card.className = "card error";
  // the server's messages name the file, which the card's title already does
  const text = message.startsWith(file.name + ": ") ? message.slice(file.name.length + 2) : message;
  card.replaceChildren(
    el("h3", { text: file.name, title: file.name }),
    el("div", { class: "err", text }));
}

function morphTable(m) {
  const labels = {
    area: "area (px²)", length: "length (px)", width: "width (px)",
    elongation: "elongation", perimeter: "perimeter (px)", rotation_deg: "rotation (°)",
  };
  const t = el("table", { class: "kv" });
  for (const [k, v] of Object.entries(m)) {
    const shown = typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2)) : String(v);
    t.append(el("tr", {}, el("td", { text: labels[k] || k }), el("td", { text: shown })));
  }
  return t;
}

function fillResult(card, file, r) {
  card.className = "card result";
  const original = URL.createObjectURL(file);
  const images = el("div", { class: "images" });
  const origFig = figure(original, "uploaded", "uploaded image");
  // Browsers cannot show TIFF: keep the slot but say so instead of a broken image.
  origFig.querySelector("img").addEventListener("error", () => {
    origFig.replaceChildren(el("div", { class: "empty", text: "preview not supported" }),
      el("figcaption", { text: "uploaded" }));
  });
  images.append(origFig);
  if (r.crop) images.append(figure(r.crop, "aligned crop (model input)", "aligned crop"));
  if (r.gradcam) {
    const cam = figure(r.gradcam, `Grad-CAM · ${r.class}`, "Grad-CAM overlay");
    if (r.gradcam_note) cam.append(el("div", { class: "hint", text: r.gradcam_note }));
    images.append(cam);
  }
  else if (r.gradcam_error) {  // asked for, but it could not be drawn: say so, not an empty slot
    images.append(el("figure", {}, el("div", { class: "empty", text: "Grad-CAM not available" }),
      el("figcaption", { text: r.gradcam_error })));
  }

  const verdict = el("div", { class: "verdict" },
    el("span", { class: "cls", text: r.class }),
    el("span", { class: "pct", text: pct(r.confidence) }));
  if (r.uncertain) {
    verdict.append(el("span", { class: "badge uncertain", text: "uncertain",
      title: "the top probability is below the model's uncertainty threshold" }));
  }
  if (r.head_found === false) {
    verdict.append(el("span", { class: "badge unaligned", text: "no head found",
      title: `${r.alignment}: classified on the whole image, and not counted in the class shares` }));
  } else if (!r.aligned) {
    verdict.append(el("span", { class: "badge unaligned", text: "not aligned", title: r.alignment }));
  }
  const unlike = r.unlike_training || [];
  if (unlike.length) {
    verdict.append(el("span", { class: "badge unlike", text: "unlike training images",
      title: "this image differs from the model's training images, so its accuracy may not hold: "
        + unlike.join("; ") }));
  }
  const order = classes.length ? classes : Object.keys(r.probabilities);
  const parts = [el("h3", { text: r.name, title: r.name }), images, verdict,
    probabilityBars(r.probabilities, order, r.class)];
  if (unlike.length) {
    parts.push(el("div", { class: "hint unlike-reasons", text: "Unlike the training images: " + unlike.join("; ") }));
  }
  const details = el("details", { class: "morph", open: true },
    el("summary", { text: `morphometrics · alignment: ${r.alignment}` }));
  if (r.morphometrics) details.append(morphTable(r.morphometrics));
  else details.append(el("div", { class: "hint", text: "no head outline found" }));
  parts.push(details);
  card.replaceChildren(...parts);
}

// Returns [classified, failed] among the answers that joined the current sample.
async function sendBatch(files, group) {
  const sample = sampleNumber;
  const pending = files.map((f) => pendingCard(f, group));
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const q = gradcamBox.checked ? "?gradcam=true" : "";
  let response;
  try {
    response = await fetch("api/predict" + q, { method: "POST", body: form });
  } catch (e) {
    files.forEach((f, i) => fillError(pending[i], f, `network error: ${e.message}`));
    return [0, sample === sampleNumber ? files.length : 0];
  }
  if (!response.ok) {
    const message = await errorText(response);
    files.forEach((f, i) => fillError(pending[i], f, message));
    return [0, sample === sampleNumber ? files.length : 0];
  }
  const body = await response.json();
  if (sample !== sampleNumber) return [0, 0]; // New sample was pressed while this batch was out
  let failed = 0;
  body.results.forEach((r, i) => {
    if (r.ok) {
      fillResult(pending[i], files[i], r);
      if (r.head_found === false) headless += 1; // a blank frame or debris is no head to count
      else predicted.push(r.class);
    } else { failed += 1; fillError(pending[i], files[i], r.error); }
  });
  return [files.length - failed, failed];
}

async function handleFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  const sample = sampleNumber;
  statusLine.textContent = `classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
  newSampleButton.hidden = false;
  const group = el("div", { class: "card-group" });
  cards.prepend(group);
  for (let i = 0; i < files.length; i += BATCH) {
    // New sample drops the rest of a drop that was under way: one slide's heads never join the next's
    if (sample !== sampleNumber) return;
    const [ok, bad] = await sendBatch(files.slice(i, i + BATCH), group);
    classifiedOnPage += ok;
    failedOnPage += bad;
  }
  if (sample !== sampleNumber) return; // the page was cleared while the last batch was out
  await showSample(); // before the status line, which thus says when the page is settled
  if (sample !== sampleNumber) return; // ... or while the shares were on their way
  statusLine.textContent = `${classifiedOnPage} classified on this page`
    + (failedOnPage ? `, ${failedOnPage} could not be used` : "")
    + (headless ? ` · no head found in ${headless} (not in the class shares)` : "");
}

function shareText(row, key, star) {
  const s = `${pct(row[key])} (${(100 * row[key + "_low"]).toFixed(1)}-${(100 * row[key + "_high"]).toFixed(1)})`;
  return star ? s + " ★" : s;
}

// The class shares of every head on the page, as predict gives a folder's (POST /api/composition).
async function showSample() {
  if (predicted.length < minHeads) return;
  const sample = sampleNumber;
  let body;
  try {
    const response = await fetch("api/composition", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ predicted }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    body = await response.json();
  } catch (e) {
    if (sample !== sampleNumber) return; // New sample was pressed meanwhile: not this page's
    samplePanel.replaceChildren(el("div", { class: "err", text: `class shares unavailable: ${e.message}` }));
    samplePanel.hidden = false;
    return;
  }
  if (sample !== sampleNumber) return; // the shares of a sample the page no longer shows
  const head = el("tr", {}, el("th", { text: "class" }), el("th", { text: "heads" }),
    el("th", { text: "counted (95% CI)" }));
  if (body.adjusted) head.append(el("th", { text: "adjusted for the model's errors" }));
  const table = el("table", { class: "shares" }, head);
  body.rows.forEach((r, i) => {
    const closer = body.closer ? body.closer[i] : null;
    const tr = el("tr", {}, el("td", { text: r.class }), el("td", { text: String(r.count) }),
      el("td", { text: shareText(r, "share", closer === "counted") }));
    if (body.adjusted) tr.append(el("td", { text: shareText(r, "adjusted", closer === "adjusted") }));
    table.append(tr);
  });
  const notes = [];
  if (body.adjusted) notes.push("Adjusted: the shares that best explain these predictions, given the model's errors on its run's held-out images.");
  if (body.check) {
    const mean = (v) => (100 * v.reduce((a, b) => a + b, 0) / v.length).toFixed(1);
    notes.push(`★ the closer of the two in this model's check: on ${body.check.samples} samples of up to `
      + `${body.check.heads} held-out heads, shares were off by ${mean(body.check.error.counted)} points counted `
      + `and ${mean(body.check.error.adjusted)} adjusted, on average; each interval is widened to hold the truth `
      + `in ${Math.round(100 * body.check.level)}% of them.`);
  }
  samplePanel.replaceChildren(
    el("div", { class: "sample-head" }, el("h2", { text: `This sample: all ${body.heads} heads on this page` })),
    table, ...notes.map((n) => el("div", { class: "hint", text: n })));
  samplePanel.hidden = false;
}

// The next sample starts from an empty page. The button shows once anything is on it (below
// the heads a sample's shares need too, and when those could not be had).
const newSampleButton = document.getElementById("new-sample");
newSampleButton.addEventListener("click", newSample);

function newSample() {
  sampleNumber += 1;
  predicted.length = 0;
  headless = 0;
  classifiedOnPage = 0;
  failedOnPage = 0;
  cards.replaceChildren();
  samplePanel.replaceChildren();
  samplePanel.hidden = true;
  statusLine.textContent = "";
  newSampleButton.hidden = true;
  input.focus(); // the button is gone: keyboard focus goes to the picker, not to the top of the page
}

input.addEventListener("change", () => { handleFiles(input.files); input.value = ""; });
for (const ev of ["dragenter", "dragover"]) {
  dropzone.addEventListener(ev, (e) => { e.preventDefault(); dropzone.classList.add("over"); });
}
for (const ev of ["dragleave", "drop"]) {
  dropzone.addEventListener(ev, (e) => { e.preventDefault(); dropzone.classList.remove("over"); });
}
dropzone.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
// A file dropped beside the zone must not navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

loadModelInfo().then((m) => {
  if (m) { classes = m.classes; minHeads = m.sample_min_heads ?? minHeads; }
});

// Classify page: files go to POST /api/predict a few at a time; each gets a card.
"use strict";

const BATCH = 8; // files per request: one slow batch never holds back the whole drop
const FORM_MARGIN = 64 * 1024; // room for the form's own bytes beside the files, within the request limit
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
let dropsOut = 0;     // drops still being classified: the status line settles when none is
let sharesAsked = 0;  // the latest class-shares request; an earlier answer arriving later is dropped
const onPage = new Map(); // name|size|time -> the files on this page with it: one head given twice counts once
let repeats = 0;          // ... and how many repeats were left out
const previews = [];      // object URLs of the uploaded images shown, freed with the page's cards
// a file read out of a dropped folder -> its path from that folder ("HuSHeM/01_Normal/image_001.BMP"),
// so cards tell apart the files of one name in its subfolders
const pathInDrop = new WeakMap();

function shownName(file) {
  return pathInDrop.get(file) || file.name;
}

function figure(src, caption, alt) {
  const img = el("img", { src, alt });
  return el("figure", {}, img, el("figcaption", { text: caption }));
}

// Each drop or selection goes on top of the page, its files in the order they were given, so
// the cards read like the list of files a lab has on its slide sheet.
function pendingCard(file, group) {
  const card = el("article", { class: "card", "data-name": file.name },
    el("h3", { text: shownName(file), title: shownName(file) }),
    el("div", { class: "status-line", text: "classifying…" }));
  group.append(card);
  return card;
}

function fillError(card, file, message) {
  card.className = "card error";
  // the server's messages name the file, which the card's title already does
  const text = message.startsWith(file.name + ": ") ? message.slice(file.name.length + 2) : message;
  card.replaceChildren(
    el("h3", { text: shownName(file), title: shownName(file) }),
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
  previews.push(original);
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
  const parts = [el("h3", { text: shownName(file), title: shownName(file) }), images, verdict,
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
  // a file that could not be classified may be given again (a retry is no repeat)
  const fail = (i, message) => {
    fillError(pending[i], files[i], message);
    if (sample === sampleNumber) forget(files[i]);
  };
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const q = gradcamBox.checked ? "?gradcam=true" : "";
  let response;
  try {
    response = await fetch("api/predict" + q, { method: "POST", body: form });
  } catch (e) {
    files.forEach((f, i) => fail(i, `network error: ${e.message}`));
    return [0, sample === sampleNumber ? files.length : 0];
  }
  if (!response.ok) {
    const message = await errorText(response);
    files.forEach((f, i) => fail(i, message));
    return [0, sample === sampleNumber ? files.length : 0];
  }
  let results;
  try {
    // a proxy's error page or a body cut short comes back as "200" too
    results = (await response.json()).results;
    if (!Array.isArray(results) || results.length !== files.length) throw new Error("no answer for every file");
  } catch (e) {
    files.forEach((f, i) => fail(i, `unreadable answer from the server: ${e.message}`));
    return [0, sample === sampleNumber ? files.length : 0];
  }
  if (sample !== sampleNumber) return [0, 0]; // New sample was pressed while this batch was out
  let failed = 0;
  results.forEach((r, i) => {
    if (r.ok) {
      fillResult(pending[i], files[i], r);
      if (r.head_found === false) headless += 1; // a blank frame or debris is no head to count
      else predicted.push(r.class);
    } else { failed += 1; fail(i, r.error); }
  });
  return [files.length - failed, failed];
}

// Batches of at most BATCH files that fit the server's limits on files and bytes per request
// (GET /api/model): files each within the upload limit are never refused for travelling together.
function batches(files) {
  const limits = (window.MODEL && window.MODEL.limits) || {};
  const most = Math.max(1, Math.min(BATCH, limits.max_files || BATCH));
  const bytes = limits.max_request_mb ? limits.max_request_mb * 1024 * 1024 - FORM_MARGIN : Infinity;
  const out = [];
  let batch = [], size = 0;
  for (const f of files) {
    if (batch.length && (batch.length >= most || size + f.size > bytes)) { out.push(batch); batch = []; size = 0; }
    batch.push(f);
    size += f.size;
  }
  if (batch.length) out.push(batch);
  return out;
}

// A dropped folder is read whole, its subfolders too, as `spermhead predict FOLDER` reads one:
// images by suffix, in name order, hidden files left out; anything else is counted and said.
const IMAGE_SUFFIXES = [".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"]; // data/readers.py's
let skippedInFolders = 0;
let emptyDrops = 0; // drops that held no image to classify
let readsOut = 0;   // dropped folders still being read: like dropsOut, the status line waits for them

// {files, skipped, unreadable}: what the dropped entries hold, counted apart so that a sample
// cleared while a large folder was read takes none of it
async function droppedFiles(entries) {
  const found = { files: [], skipped: 0, unreadable: 0 };
  for (const entry of entries) await collect(entry, found, true);
  return found;
}

async function collect(entry, found, given = false) {
  if (!given && entry.name.startsWith(".")) return; // a hidden file dropped by itself is still tried
  if (entry.isFile) {
    const image = IMAGE_SUFFIXES.some((s) => entry.name.toLowerCase().endsWith(s));
    // a file dropped by itself is tried whatever its name; in a folder, only images (and not
    // data synth's own SYNTHETIC.txt, which predict passes over in silence too)
    if (!given && !image) { found.skipped += entry.name === "SYNTHETIC.txt" ? 0 : 1; return; }
    try {
      const file = await new Promise((ok, fail) => entry.file(ok, fail));
      if (!given && entry.fullPath) pathInDrop.set(file, entry.fullPath.replace(/^\//, ""));
      found.files.push(file);
    } catch (e) {
      found.unreadable += 1; // a broken link or a file without permission: one file, not the drop
    }
    return;
  }
  const reader = entry.createReader();
  const children = [];
  try {
    for (;;) { // readEntries gives a folder's entries a batch at a time, then an empty one
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      children.push(...batch);
    }
  } catch (e) {
    found.unreadable += 1; // a subfolder that cannot be listed: counted, as a file that cannot be read
    return;
  }
  children.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const child of children) await collect(child, found);
}

async function handleDrop(entries) {
  const sample = sampleNumber;
  const group = newGroup(); // now, so a quicker drop after this one goes above it, as given
  readsOut += 1;
  statusLine.textContent = "reading the dropped files…";
  let found;
  try {
    found = await droppedFiles(entries);
  } catch (err) {
    found = { files: [], skipped: 0, unreadable: 1 };
  }
  if (sample !== sampleNumber) return; // New sample was pressed while the folder was read: not its heads
  skippedInFolders += found.skipped;
  failedOnPage += found.unreadable;
  if (found.files.length) {
    await handleFiles(found.files, group); // it leaves the status to this drop, still counted in readsOut
  } else {
    group.remove();
    emptyDrops += 1; // nothing to classify, but what was passed over is said
    if (found.skipped || found.unreadable) newSampleButton.hidden = false;
  }
  if (sample !== sampleNumber) return;
  readsOut -= 1;
  if (!dropsOut && !readsOut) settledStatus();
}

function fileKey(f) {
  return `${f.name}|${f.size}|${f.lastModified}`;
}

// A repeat is the same bytes: crops of one size share name, size and even time across folders
// (HuSHeM's image_001.BMP is in all four), so the key only says which files to compare.
async function alreadyOnPage(f) {
  for (const g of onPage.get(fileKey(f)) || []) {
    if (g === f || await sameBytes(f, g)) return true;
  }
  return false;
}

async function sameBytes(a, b) {
  const [x, y] = await Promise.all([a.arrayBuffer(), b.arrayBuffer()]);
  if (x.byteLength !== y.byteLength) return false;
  const u = new Uint8Array(x), v = new Uint8Array(y);
  for (let i = 0; i < u.length; i++) if (u[i] !== v[i]) return false;
  return true;
}

function remember(f) {
  onPage.set(fileKey(f), [...(onPage.get(fileKey(f)) || []), f]);
}

function forget(f) {
  const left = (onPage.get(fileKey(f)) || []).filter((g) => g !== f);
  if (left.length) onPage.set(fileKey(f), left);
  else onPage.delete(fileKey(f));
}

// Each drop's cards go in a group of their own, put on top of the page as the drop is made.
function newGroup() {
  const group = el("div", { class: "card-group" });
  cards.prepend(group);
  return group;
}

async function handleFiles(fileList, group = newGroup()) {
  const given = Array.from(fileList);
  const sample = sampleNumber;
  // the same file given again is the same head: classifying it twice would count it twice in
  // the shares (predict's unique_files does the same for the command line)
  const files = [];
  for (const f of given) {
    if (await alreadyOnPage(f)) repeats += 1;
    else { remember(f); files.push(f); }
  }
  if (sample !== sampleNumber) return; // New sample was pressed while they were compared
  if (!files.length) {
    group.remove();
    if (given.length && !dropsOut && !readsOut) settledStatus();
    return;
  }
  dropsOut += 1;
  statusLine.textContent = `classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
  newSampleButton.hidden = false;
  try {
    for (const batch of batches(files)) {
      // New sample drops the rest of a drop that was under way: one slide's heads never join the next's
      if (sample !== sampleNumber) return;
      const [ok, bad] = await sendBatch(batch, group);
      classifiedOnPage += ok;
      failedOnPage += bad;
    }
  } finally {
    if (sample === sampleNumber) dropsOut -= 1;
  }
  if (sample !== sampleNumber) return; // the page was cleared while the last batch was out
  await showSample(); // before the status line, which thus says when the page is settled
  if (sample !== sampleNumber) return; // ... or while the shares were on their way
  if (!dropsOut && !readsOut) settledStatus(); // another drop still out says so until it ends
}

function settledStatus() {
  statusLine.textContent = `${classifiedOnPage} classified on this page`
    + (failedOnPage ? `, ${failedOnPage} could not be used` : "")
    + (headless ? ` · no head found in ${headless} (not in the class shares)` : "")
    + (repeats ? ` · ${repeats} file${repeats > 1 ? "s" : ""} already on this page left out` : "")
    + (skippedInFolders ? ` · ${skippedInFolders} file${skippedInFolders > 1 ? "s" : ""} in dropped folders `
      + "skipped for their suffix" : "")
    + (emptyDrops ? ` · ${emptyDrops} drop${emptyDrops > 1 ? "s" : ""} held no image to classify` : "");
}

function shareText(row, key, star) {
  const s = `${pct(row[key])} (${(100 * row[key + "_low"]).toFixed(1)}-${(100 * row[key + "_high"]).toFixed(1)})`;
  return star ? s + " ★" : s;
}

// The class shares of every head on the page, as predict gives a folder's (POST /api/composition).
async function showSample() {
  if (predicted.length < minHeads) return;
  const sample = sampleNumber;
  const asked = ++sharesAsked;
  let body;
  try {
    const response = await fetch("api/composition", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ predicted }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    body = await response.json();
  } catch (e) {
    if (sample !== sampleNumber || asked !== sharesAsked) return; // not this page's, or not its latest
    samplePanel.replaceChildren(el("div", { class: "err", text: `class shares unavailable: ${e.message}` }));
    samplePanel.hidden = false;
    return;
  }
  // the shares of a sample the page no longer shows, or an older answer overtaken by a newer one
  if (sample !== sampleNumber || asked !== sharesAsked) return;
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
  dropsOut = 0;
  onPage.clear();
  repeats = 0;
  skippedInFolders = 0;
  emptyDrops = 0;
  readsOut = 0;
  cards.replaceChildren();
  previews.splice(0).forEach((url) => URL.revokeObjectURL(url)); // or each sample's originals stay in memory
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
dropzone.addEventListener("drop", (e) => {
  // the entries must be taken while the event lasts; a folder among them is read afterwards
  const entries = Array.from(e.dataTransfer.items || [], (it) => it.webkitGetAsEntry && it.webkitGetAsEntry());
  if (!entries.length || entries.some((en) => !en)) { handleFiles(e.dataTransfer.files); return; }
  handleDrop(entries);
});
// A file dropped beside the zone must not navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

loadModelInfo().then((m) => {
  if (m) { classes = m.classes; minHeads = m.sample_min_heads ?? minHeads; }
});

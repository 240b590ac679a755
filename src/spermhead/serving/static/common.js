// Helpers shared by the pages. Every text from the server or a file name goes in through
// textContent, never innerHTML, so a crafted file name cannot inject markup.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function pct(p) {
  return (100 * p).toFixed(1) + "%";
}

// Probability bars, classes in the model's order, the top one highlighted.
function probabilityBars(probabilities, classes, top) {
  const box = el("div", { class: "bars" });
  for (const c of classes) {
    const p = probabilities[c] ?? 0;
    const isTop = c === top;
    box.append(
      el("span", { class: "name" + (isTop ? " top" : ""), text: c }),
      el("span", { class: "track" }, el("span", { class: "fill" + (isTop ? " top" : ""), style: `width:${(100 * p).toFixed(1)}%` })),
      el("span", { class: "val", text: pct(p) }),
    );
  }
  return box;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

async function loadModelInfo() {
  const target = document.getElementById("model-info");
  try {
    const r = await fetch("api/model");
    if (!r.ok) throw new Error(await errorText(r));
    const m = await r.json();
    window.MODEL = m;
    const acc = m.run && m.run.metrics && typeof m.run.metrics.accuracy === "number"
      ? ` · run accuracy ${pct(m.run.metrics.accuracy)}${m.run.synthetic ? " on synthetic heads" : ""}` : "";
    target.textContent = `${m.architecture} · ${m.input.size}px ${m.input.color} · ${m.classes.length} classes${acc}`;
    return m;
  } catch (e) {
    target.textContent = "model info unavailable";
    return null;
  }
}

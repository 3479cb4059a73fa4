// histoscan web page: upload patches, show P(tumour), label and Grad-CAM. Plain JS, no build step.
"use strict";

const DIGITS = 4;          // probabilities are shown with 4 decimals (toFixed: the API value, rounded)
const PARALLEL = 4;        // files in flight at once; the server micro-batches concurrent requests
const KEY_STORE = "histoscan-api-key";
const FIELD = "files";     // the upload field of every endpoint (/v1/explain and /v1/preview take one file)

const state = { model: null, modelReady: null, rows: [], queue: [], running: 0 };
const $ = (sel) => document.querySelector(sel);

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!res.ok) {
    let detail = res.status + " " + res.statusText;
    try { const j = await res.json(); detail = j.detail || j.error || detail; } catch (_) { /* not JSON */ }
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return res;
}

function showError(msg) {
  const el = $("#error");
  el.textContent = msg || "";
  el.hidden = !msg;
}

function needKey() {
  // the "API key" toggle sits above the message: open it and put the cursor in the field
  showError("This server needs an API key: enter it under “API key” above and press save.");
  $("#settings").open = true;
  $("#api-key").focus();
}

async function loadModel() {
  try {
    const m = await (await api("/v1/model")).json();
    state.model = m;
    const mpp = m.mpp ? `, ${m.mpp} µm/px` : "";
    $("#model-info").textContent =
      `${m.name} · ${m.image_size}×${m.image_size} px${mpp} · threshold ${m.threshold.toFixed(3)} · ` +
      `${m.backend} on ${m.device} · version ${m.version}`;
    showError("");
  } catch (e) {
    $("#model-info").textContent = "model information unavailable";
    if (e.status === 401) needKey(); else showError(String(e.message));
  }
}

function formData(file) {
  const fd = new FormData();
  fd.append(FIELD, file, file.name);
  return fd;
}

function newCard(file) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".name").textContent = file.name;
  node.dataset.filename = file.name;
  $("#results").prepend(node);
  return node;
}

function setPrediction(card, p) {
  const prob = card.querySelector(".probability");
  prob.textContent = p.probability.toFixed(DIGITS);
  prob.dataset.probability = String(p.probability);
  const label = card.querySelector(".label");
  label.textContent = p.class;
  label.className = "label " + p.class;
  card.classList.toggle("is-tumour", p.label === 1);
  card.querySelector(".bar-fill").style.width = (100 * p.probability).toFixed(1) + "%";
  card.querySelector(".bar-threshold").style.left = (100 * p.threshold).toFixed(1) + "%";
  card.querySelector(".bar").title = `threshold ${p.threshold}`;
  // say every change made to the upload: its size fitted to the model's (p.fitted) and colour conversions
  const parts = [`${p.width}×${p.height} px`];
  if (p.fitted) {  // "padded 50x42 -> 96x96" is shown as "padded to 96×96 px for the model"
    const [kind, , , target] = p.fitted.split(" ");
    parts.push(`${kind} to ${target.replace("x", "×")} px for the model`);
  }
  if (p.note) parts.push(`converted: ${p.note}`);
  card.querySelector(".note").textContent = parts.join(", ");
  card.dataset.fitted = p.fitted || "";
  card.dataset.state = "predicted";
}

function dropMissingImages(card) {
  // an image that never arrived leaves no broken-image placeholder behind
  for (const img of card.querySelectorAll("img")) {
    if (img.hidden) continue;
    if (!img.getAttribute("src") || !img.complete || img.naturalWidth === 0) img.closest("figure").remove();
  }
  const images = card.querySelector(".images");
  if (images && !images.querySelector("figure")) images.remove();
}

function showFailure(card, message) {
  // keep what did arrive (a prediction), drop the images that did not, and say what went wrong
  card.classList.add("failed");
  card.dataset.state = "failed";
  dropMissingImages(card);
  if (!card.querySelector(".probability").dataset.probability) {
    const result = card.querySelector(".result");
    result.replaceChildren();
    const label = document.createElement("span");
    label.className = "label failed";
    label.textContent = "failed";
    result.append(label);
    card.querySelector(".bar").remove();
  }
  const note = card.querySelector(".note");
  note.textContent = message;
  note.classList.remove("muted");
  note.classList.add("error-detail");
}

function setImage(img, url) {
  return new Promise((resolve) => {
    img.onload = () => resolve(true);
    img.onerror = () => resolve(false);
    img.src = url;
  });
}

async function processFile(file) {
  const card = newCard(file);
  const row = { filename: file.name, id: "", probability: "", label: "", fitted: "", error: "" };
  state.rows.push(row);
  await state.modelReady;  // whether the model can explain decides the requests below
  try {
    const pred = (await (await api("/v1/predict", { method: "POST", body: formData(file) })).json())
      .predictions[0];
    const fitted = pred.fitted || "";
    Object.assign(row, { id: pred.id, probability: pred.probability, label: pred.label, fitted });
    setPrediction(card, pred);
    const gradcam = card.querySelector(".gradcam");
    if (state.model && state.model.explain) {
      const ex = await (await api("/v1/explain?format=json", { method: "POST", body: formData(file) })).json();
      await setImage(card.querySelector(".thumb"), ex.image);
      gradcam.title = "Grad-CAM for the predicted class (" + ex.class + ")";
      if (await setImage(gradcam, ex.overlay)) card.dataset.gradcam = "shown";
    } else {
      const blob = await (await api("/v1/preview", { method: "POST", body: formData(file) })).blob();
      await setImage(card.querySelector(".thumb"), URL.createObjectURL(blob));
      gradcam.hidden = true;
      card.querySelector(".gradcam-caption").textContent = "Grad-CAM needs a run folder or .ckpt (ONNX served)";
    }
    dropMissingImages(card);
    card.dataset.state = "done";
  } catch (e) {
    row.error = e.message;
    showFailure(card, e.message);
    if (e.status === 401) needKey();
  }
  updateSummary();
}

function pump() {
  while (state.running < PARALLEL && state.queue.length) {
    const file = state.queue.shift();
    state.running += 1;
    processFile(file).finally(() => { state.running -= 1; pump(); });
  }
}

function addFiles(files) {
  for (const f of files) state.queue.push(f);
  $("#toolbar").hidden = false;
  pump();
}

function updateSummary() {
  const done = state.rows.filter((r) => r.probability !== "");
  const tumour = done.filter((r) => r.label === 1).length;
  const failed = state.rows.filter((r) => r.error).length;
  $("#summary").textContent = `${done.length} predicted (${tumour} tumour, ${done.length - tumour} normal)` +
    (failed ? `, ${failed} failed` : "");
}

function csvCell(v) {
  const s = String(v);
  return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function downloadCsv() {
  const lines = ["filename,id,probability,label,fitted,error"];
  for (const r of state.rows) {
    lines.push([r.filename, r.id, r.probability, r.label, r.fitted, r.error].map(csvCell).join(","));
  }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  a.download = "histoscan-predictions.csv";
  a.click();
}

function init() {
  const drop = $("#drop");
  $("#file-input").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => addFiles(e.dataTransfer.files));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("#file-input").click(); });
  $("#api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("#save-key").addEventListener("click", () => {
    const v = $("#api-key").value.trim();
    if (v) localStorage.setItem(KEY_STORE, v); else localStorage.removeItem(KEY_STORE);
    state.modelReady = loadModel();
  });
  $("#download-csv").addEventListener("click", downloadCsv);
  $("#clear").addEventListener("click", () => {
    state.rows = [];
    $("#results").replaceChildren();
    $("#toolbar").hidden = true;
  });
  state.modelReady = loadModel();
}

document.addEventListener("DOMContentLoaded", init);

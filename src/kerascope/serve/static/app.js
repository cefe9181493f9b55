// kerascope serve: pick or drop photos, show top-k classes and where the model looks.
// Plain JavaScript, no build step, no network beyond this server. Text from files and from
// the model is always set with textContent, never parsed as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { model: null, cards: [], methods: {} };

// The methods come from /v1/models (the server's registry): each with its cost per image and
// whether it passes the weight-randomisation sanity check.
function methodTitle(name) {
  const d = state.methods[name];
  if (d) return d.title;
  const option = [...$("#method").options].find((o) => o.value === name); // before /v1/models
  return option ? option.textContent : name;
}

function methodNote(d) {
  if (!d) return "";
  return `Cost per image: ${d.cost}.` +
    (d.sanity ? "" : " Fails the randomisation sanity check: the map may partly show the " +
      "layer itself rather than what the model learned.") +
    (d.allowed ? "" : " This server refuses it (started without --allow-expensive).");
}

function fillMethods(details) {
  const select = $("#method");
  const chosen = select.value || "gradcam";
  state.methods = Object.fromEntries(details.map((d) => [d.name, d]));
  select.replaceChildren();
  for (const d of details) {
    const option = document.createElement("option");
    option.value = d.name;
    option.textContent = d.title + (d.sanity ? "" : " (fails sanity check)") +
      (d.allowed ? "" : " (not on this server)");
    option.title = methodNote(d);
    option.disabled = !d.allowed;
    option.selected = d.name === chosen;
    select.append(option);
  }
  if (!state.methods[select.value] || !state.methods[select.value].allowed) select.value = "gradcam";
  $("#method-note").textContent = methodNote(state.methods[select.value]);
}

function status(text) { $("#status").textContent = text; }

async function api(path, file) {
  const body = new FormData();
  body.append("file", file, file.name);
  const response = await fetch(path, { method: "POST", body });
  let data = null;
  try { data = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (!response.ok) {
    throw new Error((data && data.error) || `the server answered ${response.status}`);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) q.set(k, v);
  return q.toString();
}

// As kerascope.output.percent: one decimal, two under 0.1 %, never a "0.0%" for a non-zero p.
function percent(p) {
  if (p >= 0.001) return `${(100 * p).toFixed(1)}%`;
  if (p >= 0.0001) return `${(100 * p).toFixed(2)}%`;
  return p > 0 ? "<0.01%" : "0%";
}

function showError(card, message) {
  const el = $(".error", card.root);
  el.textContent = message;
  el.hidden = false;
}

// A multi-label model's answer lists every label at or over its own threshold (tuned on
// validation), each shown with it; it may list none.
function renderClasses(card, predictions, multilabel = false) {
  const list = $(".classes", card.root);
  list.replaceChildren();
  if (multilabel && !predictions.length) {
    const item = document.createElement("li");
    item.className = "none";
    item.textContent = "No label reaches its threshold.";
    list.append(item);
  }
  for (const p of predictions) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = String(p.index);
    button.style.setProperty("--p", `${Math.max(0.5, 100 * p.probability)}%`);
    button.setAttribute("aria-pressed", "false");
    button.title = `Show where the model sees ${p.name}`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.name.replaceAll("_", " ");
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p.probability);
    if (multilabel) {
      const cut = document.createElement("span");
      cut.className = "threshold";
      cut.textContent = ` (threshold ${percent(p.threshold)})`;
      value.append(cut);
    }
    button.append(label, value);
    button.addEventListener("click", () => explain(card, p.index));
    item.append(button);
    list.append(item);
  }
}

async function explain(card, classIndex) {
  card.target = classIndex;
  const method = $("#method").value;
  const caption = $(".explained", card.root);
  caption.textContent = `${methodTitle(method)}: computing…`;
  for (const b of card.root.querySelectorAll(".classes button")) {
    b.setAttribute("aria-pressed", String(classIndex !== null && b.dataset.index === String(classIndex)));
  }
  const ticket = (card.ticket = (card.ticket || 0) + 1);
  try {
    const fit = $("#fit").value;
    const q = query({ method, model: state.model, class: classIndex, max_side: 1024, fit });
    const data = await api(`/v1/explain?${q}`, card.file);
    if (ticket !== card.ticket) return; // a newer request for this card won
    const r = data.results[0];
    const overlay = $(".overlay", card.root);
    overlay.alt = `${methodTitle(method)} heatmap for ${r.class_name}`;
    overlay.src = r.heatmap;
    caption.textContent = `${methodTitle(method)}: where the model sees ` +
      `${r.class_name.replaceAll("_", " ")} (${percent(r.probability)})` +
      (r.fit === "crop" ? "; it saw only the outlined centre crop" : "");
    for (const b of card.root.querySelectorAll(".classes button")) {
      b.setAttribute("aria-pressed", String(b.dataset.index === String(r.class_index)));
    }
    card.root.dataset.explained = "true";
  } catch (err) {
    if (ticket !== card.ticket) return;
    caption.textContent = "Heatmap: not available";
    showError(card, err.message);
  }
}

async function classify(card) {
  try {
    const fit = $("#fit").value; // the same input as the heatmap: classes and map agree
    const data = await api(`/v1/classify?${query({ top: 5, model: state.model, fit })}`, card.file);
    renderClasses(card, data.results[0].predictions, Boolean(data.multilabel));
    card.root.dataset.classified = "true";
  } catch (err) {
    showError(card, err.message);
  }
}

function addPhoto(file) {
  const root = $("#card-template").content.firstElementChild.cloneNode(true);
  const card = { root, file, target: null };
  $(".name", root).textContent = file.name;
  const url = URL.createObjectURL(file);
  for (const img of root.querySelectorAll(".photo")) img.src = url;
  $(".photo", root).alt = `Photo ${file.name}`;
  $("#results").prepend(root);
  state.cards.push(card);
  return Promise.all([classify(card), explain(card, null)]);
}

async function addPhotos(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/") || f.type === "");
  if (!images.length) { status("No image among the files given."); return; }
  status(`Looking at ${images.length} photo${images.length > 1 ? "s" : ""}…`);
  await Promise.all(images.map(addPhoto));
  status(`Done: ${images.length} photo${images.length > 1 ? "s" : ""}. ` +
    "Choose a class to see where the model finds it.");
}

function setOpacity(value) {
  document.documentElement.style.setProperty("--heat-opacity", value);
  $("#opacity-value").textContent = `${Math.round(100 * value)}%`;
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models");
    const data = await response.json();
    state.model = data.default;
    const details = (m) => (data.models.find((x) => x.name === m) || {}).method_details || [];
    fillMethods(details(state.model));
    const select = $("#model");
    for (const m of data.models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.multilabel ? `${m.name} (${m.num_classes} labels, multi-label)`
        : `${m.name} (${m.num_classes} classes)`;
      option.selected = m.default;
      select.append(option);
    }
    $("#model-field").hidden = data.models.length < 2;
    select.addEventListener("change", () => {
      state.model = select.value;
      fillMethods(details(state.model));
      for (const card of state.cards) { classify(card); explain(card, null); }
    });
  } catch (err) {
    status(`Cannot reach the server: ${err.message}`);
  }
}

function setUp() {
  $("#files").addEventListener("change", (e) => { addPhotos(e.target.files); e.target.value = ""; });
  $("#method").addEventListener("change", () => {
    $("#method-note").textContent = methodNote(state.methods[$("#method").value]);
    for (const card of state.cards) explain(card, card.target);
  });
  $("#fit").addEventListener("change", () => {
    for (const card of state.cards) { classify(card); explain(card, card.target); }
  });
  $("#opacity").addEventListener("input", (e) => setOpacity(e.target.value));
  setOpacity($("#opacity").value);
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => {
    if (e.target === document.documentElement || e.target === document.body) {
      document.body.classList.remove("dragging");
    }
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files.length) addPhotos(e.dataTransfer.files);
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", setUp);

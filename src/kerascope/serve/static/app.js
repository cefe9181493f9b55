// kerascope serve: pick or drop photos, show top-k classes and where the model looks.
// Plain JavaScript, no build step, no network beyond this server. Text from files and from
// the model is always set with textContent, never parsed as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { model: null, cards: [] };
const METHOD_NAMES = { cam: "CAM", gradcam: "Grad-CAM", "gradcam++": "Grad-CAM++" };

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

function percent(p) { return `${(100 * p).toFixed(p >= 0.1 ? 1 : 2)}%`; }

function showError(card, message) {
  const el = $(".error", card.root);
  el.textContent = message;
  el.hidden = false;
}

function renderClasses(card, predictions) {
  const list = $(".classes", card.root);
  list.replaceChildren();
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
  caption.textContent = `${METHOD_NAMES[method]}: computing…`;
  for (const b of card.root.querySelectorAll(".classes button")) {
    b.setAttribute("aria-pressed", String(classIndex !== null && b.dataset.index === String(classIndex)));
  }
  const ticket = (card.ticket = (card.ticket || 0) + 1);
  try {
    const q = query({ method, model: state.model, class: classIndex, max_side: 1024 });
    const data = await api(`/v1/explain?${q}`, card.file);
    if (ticket !== card.ticket) return; // a newer request for this card won
    const r = data.results[0];
    const overlay = $(".overlay", card.root);
    overlay.alt = `${METHOD_NAMES[method]} heatmap for ${r.class_name}`;
    overlay.src = r.heatmap;
    caption.textContent = `${METHOD_NAMES[method]}: where the model sees ` +
      `${r.class_name.replaceAll("_", " ")} (${percent(r.probability)})`;
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
    const data = await api(`/v1/classify?${query({ top: 5, model: state.model })}`, card.file);
    renderClasses(card, data.results[0].predictions);
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
    const select = $("#model");
    for (const m of data.models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} (${m.num_classes} classes)`;
      option.selected = m.default;
      select.append(option);
    }
    $("#model-field").hidden = data.models.length < 2;
    select.addEventListener("change", () => {
      state.model = select.value;
      for (const card of state.cards) { classify(card); explain(card, null); }
    });
  } catch (err) {
    status(`Cannot reach the server: ${err.message}`);
  }
}

function setUp() {
  $("#files").addEventListener("change", (e) => { addPhotos(e.target.files); e.target.value = ""; });
  $("#method").addEventListener("change", () => {
    for (const card of state.cards) explain(card, card.target);
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

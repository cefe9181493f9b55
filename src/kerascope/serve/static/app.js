// kerascope serve: pick or drop photos, show top-k classes and where the model looks.
// Plain JavaScript, no build step, no network beyond this server. Text from files and from
// the model is always set with textContent, never parsed as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { model: null, cards: [], methods: {}, skipped: { names: [], none: false } };

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

const MAX_WAIT_S = 120; // the longest a request waits on a busy server before it gives up

function unreachable() {
  return `cannot reach the kerascope server at ${location.host}: ` +
    "is `kerascope serve` still running?";
}

// `refused`: the server turned the file itself away (unreadable, empty, too many pixels): the
// same bytes get the same answer whatever the method, fit or model.
function failure(message, retryable, refused = false) {
  return Object.assign(new Error(message), { retryable, refused });
}

function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, 1000 * seconds);
    const stop = () => { clearTimeout(timer); reject(signal.reason); };
    if (signal) signal.addEventListener("abort", stop, { once: true });
  });
}

// A request the server turns away for now (429: the expensive methods' quota, filled by other
// clients; 503: busy) is sent again after its Retry-After, up to MAX_WAIT_S in all;
// onWait(seconds) says so meanwhile.
// Errors carry `retryable`: whether trying again later may help (the card offers Retry).
async function api(path, file, { signal, onWait } = {}) {
  for (let waited = 0; ;) {
    const body = new FormData();
    body.append("file", file, file.name);
    let response;
    try {
      response = await fetch(path, { method: "POST", body, signal });
    } catch (err) {
      if (signal && signal.aborted) throw err;
      throw failure(unreachable(), true); // fetch's own "Failed to fetch" says nothing useful
    }
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON: reported below */ }
    if (response.ok && data) return data;
    const message = (data && data.error) || `the server answered ${response.status}`;
    const busy = response.status === 429 || response.status === 503;
    const wait = Math.max(1, Number(response.headers.get("Retry-After")) || 1);
    if (!busy || waited + wait > MAX_WAIT_S) {
      const retryable = busy || response.status === 408 || response.status >= 500;
      // The file's own error in the results (a 415, 400 or 422 of every file), or a 413.
      const own = Boolean(data && data.results && data.results.some((r) => r && r.error));
      throw failure(message, retryable, !retryable && (own || response.status === 413));
    }
    if (onWait) onWait(wait);
    await sleep(wait, signal);
    waited += wait;
  }
}

// The server takes at most `max_expensive_inflight` images of the expensive methods (Score-CAM,
// ...) per model at once and refuses more with 429, which Chromium logs to the console as it
// logs every refused request, handled or not. So the page sends no more than that itself: only
// other clients' requests can still make it wait (for Retry-After, in `api`).
const turns = {}; // per model: { used, waiting: [start, ...] }

// A turn to send an expensive request for `model`: a function that ends it, once the page has
// fewer than the server's quota in flight. onQueue(true) when it must wait, onQueue(false) when
// its turn comes after that.
function expensiveTurn(model, signal, onQueue) {
  const q = (turns[model || ""] ??= { used: 0, waiting: [] });
  return new Promise((resolve, reject) => {
    if (signal.aborted) { reject(signal.reason); return; }
    let queued = false;
    const start = () => {
      signal.removeEventListener("abort", drop);
      q.used += 1;
      if (queued) onQueue(false);
      let ended = false;
      resolve(() => {
        if (ended) return;
        ended = true;
        q.used -= 1;
        const next = q.waiting.shift();
        if (next) next();
      });
    };
    const drop = () => {
      q.waiting = q.waiting.filter((s) => s !== start);
      reject(signal.reason);
    };
    if (q.used < state.maxExpensive) { start(); return; }
    queued = true;
    signal.addEventListener("abort", drop, { once: true });
    q.waiting.push(start);
    onQueue(true);
  });
}

// `api`, taking turns with the page's other requests of an expensive method.
async function explainApi(path, file, method, { signal, onWait, onQueue }) {
  const d = state.methods[method];
  if (!d || !d.expensive || !state.maxExpensive) return api(path, file, { signal, onWait });
  const done = await expensiveTurn(state.model, signal, onQueue);
  try {
    return await api(path, file, { signal, onWait });
  } finally {
    done();
  }
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

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

// A few names, then how many more: a folder of 500 text files must not fill the page.
function nameList(names, most = 3) {
  const shown = names.slice(0, most).map((n) => `'${n}'`).join(", ");
  return names.length > most ? `${shown} and ${names.length - most} more` : shown;
}

// The status line sums up every card: working, or done with how many failed, and the files
// of the last pick or drop that were not images.
function updateStatus() {
  const { names, none } = state.skipped;
  const skipped = !names.length ? "" : none ? `No image among the files given: ${nameList(names)}.`
    : `Skipped, not images: ${nameList(names)}.`;
  const cards = state.cards;
  if (!cards.length) { status(skipped); return; }
  const busy = cards.filter((c) => c.requests.classify || c.requests.explain).length;
  const failed = cards.filter((c) => c.errors.classify || c.errors.explain).length;
  const parts = [skipped];
  if (busy) parts.unshift(`Looking at ${plural(busy, "photo")}…`);
  else {
    parts.unshift(`Done: ${plural(cards.length, "photo")}${failed ? `, ${failed} failed` : ""}.`);
    if (failed < cards.length) parts.push("Choose a class to see where the model finds it.");
  }
  status(parts.filter(Boolean).join(" "));
}

// Each card's classify and explain errors are kept apart (one request clears only its own)
// and shown together, a message once.
function renderErrors(card) {
  const errors = Object.values(card.errors).filter(Boolean);
  const el = $(".error", card.root);
  el.textContent = [...new Set(errors.map((e) => e.message))].join("\n");
  el.hidden = !errors.length;
  $(".retry", card.root).hidden = !errors.some((e) => e.retryable);
}

// One request of each kind per card: a newer one aborts the older (the server then drops it
// if still queued) and clears the older one's error.
function begin(card, kind) {
  if (card.requests[kind]) card.requests[kind].abort();
  const request = (card.requests[kind] = new AbortController());
  card.errors[kind] = null;
  renderErrors(card);
  updateStatus();
  return request;
}

// How a request ended (its caller has checked that no newer one of its kind has started).
function end(card, kind, error = null) {
  card.requests[kind] = null;
  card.errors[kind] = error;
  renderErrors(card);
  updateStatus();
}

// The pressed class follows the chosen one, else the one the heatmap shows (the top class).
function markPressed(card) {
  const index = card.target ?? card.shown;
  for (const b of card.root.querySelectorAll(".classes button")) {
    b.setAttribute("aria-pressed", String(index != null && b.dataset.index === String(index)));
  }
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
  markPressed(card);
}

// The heatmap layer over the photo; where the browser cannot draw the photo (TIFF, ...), the
// server's own blend of photo and heatmap instead (the opacity slider cannot change that one).
function drawHeatmap(card) {
  const r = card.result;
  const under = $(".under", card.root);
  const layer = $(".overlay", card.root);
  if (!r) {
    layer.removeAttribute("src");
    if (card.photoFailed) under.hidden = true;
    return;
  }
  const alt = `${methodTitle(r.method)} heatmap for ${r.class_name}`;
  if (card.photoFailed && r.overlay) {
    under.src = r.overlay;
    under.alt = alt;
    under.hidden = false;
    layer.hidden = true;
  } else {
    layer.alt = alt;
    layer.src = r.heatmap;
  }
}

// The browser cannot draw this file (TIFF, or no image at all): no broken-image icon.
function photoFailed(card) {
  if (card.photoFailed) return;
  card.photoFailed = true;
  for (const img of card.root.querySelectorAll(".photo")) img.hidden = true;
  $(".photo-caption", card.root).textContent = "Photo: this browser cannot show this file";
  drawHeatmap(card);
}

async function explain(card, classIndex) {
  card.target = classIndex;
  const method = $("#method").value;
  const caption = $(".explained", card.root);
  caption.textContent = `${methodTitle(method)}: computing…`;
  markPressed(card);
  const request = begin(card, "explain");
  try {
    const fit = $("#fit").value;
    // A class-independent method (Eigen-CAM) draws one map for every class: the server
    // refuses a class for it, so none is sent and the caption says what the map is.
    const free = Boolean((state.methods[method] || {}).class_independent);
    const q = query({ method, model: state.model, class: free ? null : classIndex,
      max_side: 1024, fit });
    const onWait = (s) => {
      caption.textContent = `${methodTitle(method)}: the server is busy, waiting for it ` +
        `(trying again in ${s} s)…`;
    };
    const onQueue = (waiting) => {
      caption.textContent = !waiting ? `${methodTitle(method)}: computing…`
        : `${methodTitle(method)}: waiting for the other photos (this server computes ` +
          `${state.maxExpensive} at a time)…`;
    };
    const data = await explainApi(`/v1/explain?${q}`, card.file, method,
      { signal: request.signal, onWait, onQueue });
    if (card.requests.explain !== request) return; // a newer request for this card won
    const r = (card.result = { ...data.results[0], method });
    card.shown = r.class_index;
    drawHeatmap(card);
    // The server's label (explain's picture label): "goldfish <0.01% (gradcam): map shape
    // only" for a class the model all but rules out, "... not class-specific" for Eigen-CAM.
    const said = r.label || `${r.class_name.replaceAll("_", " ")} ${percent(r.probability)}`;
    caption.textContent = `${methodTitle(method)}: ` + (free ? said
      : `where the model sees ${said}`) +
      (r.fit === "crop" ? "; it saw only the outlined centre crop" : "");
    markPressed(card);
    card.root.dataset.explained = "true";
    end(card, "explain");
  } catch (err) {
    if (card.requests.explain !== request) return;
    card.result = null; // no older heatmap under a caption saying there is none
    drawHeatmap(card);
    caption.textContent = "Heatmap: not available";
    end(card, "explain", err);
  }
}

async function classify(card) {
  const request = begin(card, "classify");
  try {
    const fit = $("#fit").value; // the same input as the heatmap: classes and map agree
    const q = query({ top: 5, model: state.model, fit });
    const data = await api(`/v1/classify?${q}`, card.file, { signal: request.signal });
    if (card.requests.classify !== request) return;
    renderClasses(card, data.results[0].predictions, Boolean(data.multilabel));
    card.root.dataset.classified = "true";
    end(card, "classify");
  } catch (err) {
    if (card.requests.classify !== request) return;
    $(".classes", card.root).replaceChildren(); // classes of another fit or model would mislead
    delete card.root.dataset.classified;
    end(card, "classify", err);
  }
}

// Ask again after a change (or Retry): the heatmap, and the classes where the change alters
// them or the card has none (its classify failed). Never a request whose file the server
// refused: it would refuse it again, and Chromium logs each refusal to the console.
function refresh(card, classesToo) {
  if (card.tooBig) return; // never sent: the server would refuse it
  const refused = (kind) => Boolean(card.errors[kind] && card.errors[kind].refused);
  if (!refused("classify") &&
      (classesToo || (!card.root.dataset.classified && !card.requests.classify))) classify(card);
  if (!refused("explain")) explain(card, card.target);
}

function addPhoto(file) {
  const root = $("#card-template").content.firstElementChild.cloneNode(true);
  const card = { root, file, target: null, shown: null, result: null, photoFailed: false,
    requests: {}, errors: {} };
  $(".name", root).textContent = file.name;
  const url = URL.createObjectURL(file);
  for (const img of root.querySelectorAll(".photo")) {
    img.addEventListener("error", () => { if (img.src === url) photoFailed(card); });
    img.src = url;
  }
  $(".photo", root).alt = `Photo ${file.name}`;
  $(".retry", root).addEventListener("click", () => refresh(card, false));
  $("#results").prepend(root);
  state.cards.push(card);
  // Larger than the server takes (with room for the form around it): said now, not after
  // the upload (413, twice: classify and explain).
  if (state.maxBody && file.size > state.maxBody - 4096) {
    card.tooBig = true;
    card.errors.classify = failure(`'${file.name}' is ${megabytes(file.size)}; this server ` +
      `takes up to ${megabytes(state.maxBody)} per request (kerascope serve --max-body-mb)`, false);
    renderErrors(card);
    updateStatus();
    return;
  }
  classify(card);
  explain(card, null);
}

function megabytes(bytes) { return `${(bytes / 1e6).toFixed(1)} MB`; }

function addPhotos(files) {
  const isImage = (f) => f.type.startsWith("image/") || f.type === "";
  const images = [...files].filter(isImage);
  state.skipped = { names: [...files].filter((f) => !isImage(f)).map((f) => f.name),
    none: !images.length };
  images.forEach(addPhoto);
  updateStatus();
}

function setOpacity(value) {
  document.documentElement.style.setProperty("--heat-opacity", value);
  $("#opacity-value").textContent = `${Math.round(100 * value)}%`;
}

async function loadModels() {
  let data;
  try {
    data = await (await fetch("/v1/models")).json();
  } catch (_) {
    status(unreachable());
    return;
  }
  state.model = data.default;
  state.maxBody = data.max_body_bytes || null;
  state.maxExpensive = data.max_expensive_inflight || null;
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
    for (const card of state.cards) {
      card.target = card.shown = null; // class indices of the other model
      refresh(card, true);
    }
  });
}

function setUp() {
  $("#files").addEventListener("change", (e) => { addPhotos(e.target.files); e.target.value = ""; });
  $("#method").addEventListener("change", () => {
    $("#method-note").textContent = methodNote(state.methods[$("#method").value]);
    for (const card of state.cards) refresh(card, false);
  });
  $("#fit").addEventListener("change", () => {
    for (const card of state.cards) refresh(card, true);
  });
  $("#opacity").addEventListener("input", (e) => setOpacity(e.target.value));
  setOpacity($("#opacity").value);
  // Entering a child fires dragenter there before dragleave here: a count of the two is 0 only
  // once the drag has left the window (or dropped).
  let depth = 0;
  const dragging = (on) => document.body.classList.toggle("dragging", on);
  document.addEventListener("dragenter", (e) => {
    e.preventDefault();
    depth += 1;
    dragging(true);
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) dragging(false);
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    dragging(false);
    if (e.dataTransfer && e.dataTransfer.files.length) addPhotos(e.dataTransfer.files);
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", setUp);

// deepret's page: pick a query (upload or a result), draw a box, show the top-k grid. No dependencies.
"use strict";

const K = 20;
const $ = (id) => document.getElementById(id);
const state = { file: null, id: null, box: null, offset: 0, info: null, busy: false, seq: 0 };
let token = localStorage.getItem("deepret-token") || "";

// --- API ---------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new Error("this server needs a token: enter it below");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

async function imageURL(path) {  // through fetch, so that the token travels with it
  const blob = await (await api(path)).blob();
  return URL.createObjectURL(blob);
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadInfo() {
  try {
    const health = await fetch("/api/health", { headers: token ? { Authorization: "Bearer " + token } : {} });
    if (health.status === 401) { $("auth").hidden = false; $("info").textContent = "token needed"; return; }
    state.info = await (await api("/api/info")).json();
    $("add").hidden = !state.info.uploads;
    if (health.status !== 200) {
      $("info").textContent = `${state.info.images} photos · loading the model…`;
      setTimeout(loadInfo, 1000);
      return;
    }
    showInfo();
  } catch (e) {
    $("info").textContent = "cannot reach the server: " + e.message;
  }
}

function showInfo(timings) {
  const i = state.info;
  if (!i) return;
  let text = `${i.images} photos in the index · ${i.model} · ${i.dim}-d · ${i.factory}`;
  if (timings) text += ` · query ${Math.round(timings.total)} ms`;
  $("info").textContent = text;
}

// --- choosing a query ----------------------------------------------------------------------------
function setQueryFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { status(`${file.name} is not an image`, true); return; }
  state.file = file; state.id = null; state.box = null;
  showQuery(URL.createObjectURL(file));
  search();
}

async function setQueryId(id) {
  state.file = null; state.id = id; state.box = null;
  try { showQuery(await imageURL(`/api/images/${id}`)); } catch (e) { status(e.message, true); }
  search();
  window.scrollTo({ top: 0, behavior: "smooth" });
}

function showQuery(url) {
  const img = $("query-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = url;
  $("query").hidden = false;
  $("box").hidden = true;
}

$("file").addEventListener("change", (e) => setQueryFile(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => { e.preventDefault(); setQueryFile(e.dataTransfer.files[0]); });
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
document.addEventListener("paste", (e) => {
  const item = Array.from(e.clipboardData.items).find((i) => i.type.startsWith("image/"));
  if (item) setQueryFile(item.getAsFile());
});

// --- drawing a box (mouse, pen and touch through pointer events) ----------------------------------
const stage = $("stage"), boxEl = $("box"), img = $("query-img");
let drag = null;

function stagePoint(e) {
  const r = img.getBoundingClientRect();
  return { x: Math.min(Math.max(e.clientX - r.left, 0), r.width), y: Math.min(Math.max(e.clientY - r.top, 0), r.height) };
}

function drawBox(a, b) {
  boxEl.hidden = false;
  boxEl.style.left = Math.min(a.x, b.x) + "px";
  boxEl.style.top = Math.min(a.y, b.y) + "px";
  boxEl.style.width = Math.abs(a.x - b.x) + "px";
  boxEl.style.height = Math.abs(a.y - b.y) + "px";
}

stage.addEventListener("pointerdown", (e) => {
  if (!img.naturalWidth) return;
  e.preventDefault();
  stage.setPointerCapture(e.pointerId);
  drag = { start: stagePoint(e) };
});
stage.addEventListener("pointermove", (e) => { if (drag) drawBox(drag.start, stagePoint(e)); });
stage.addEventListener("pointerup", (e) => {
  if (!drag) return;
  const a = drag.start, b = stagePoint(e);
  drag = null;
  const scale = img.naturalWidth / img.getBoundingClientRect().width;
  const box = [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)].map((v) => Math.round(v * scale));
  if (box[2] - box[0] < 8 || box[3] - box[1] < 8) {  // a click, not a box: back to the whole photo
    if (state.box) { state.box = null; boxEl.hidden = true; search(); } else boxEl.hidden = true;
    return;
  }
  state.box = box;
  search();
});
stage.addEventListener("pointercancel", () => { drag = null; });

$("whole").addEventListener("click", () => { state.box = null; boxEl.hidden = true; search(); });
$("qe").addEventListener("change", () => search());
$("diffusion").addEventListener("change", () => search());

// --- searching and the grid ----------------------------------------------------------------------
function rerankSpec() {
  const toggles = (state.info && state.info.rerank_toggles) || { qe: "alpha-qe", diffusion: "diffusion" };
  return ["qe", "diffusion"].filter((t) => $(t).checked).map((t) => toggles[t]).join("+");
}

async function search(more = false) {
  if (!state.file && state.id === null) return;
  const seq = ++state.seq;  // a newer search makes older answers stale
  state.offset = more ? state.offset + K : 0;
  const form = new FormData();
  if (state.file) form.append("file", state.file, state.file.name || "pasted.png");
  else form.append("id", state.id);
  if (state.box) form.append("box", state.box.join(","));
  form.append("k", K);
  form.append("offset", state.offset);
  const rerank = rerankSpec();
  if (rerank) form.append("rerank", rerank);
  status(more ? "loading more…" : "searching…");
  document.body.classList.add("busy");
  try {
    const answer = await (await api("/api/search", { method: "POST", body: form })).json();
    if (seq !== state.seq) return;
    showResults(answer, more);
    showInfo(answer.timings);
    const what = answer.query.box ? "the box" : "the whole photo";
    status(`${answer.offset + answer.results.length} of ${answer.total} shown · searched with ${what}` +
           (answer.rerank ? ` · re-ranked (${answer.rerank})` : ""));
  } catch (e) {
    if (seq === state.seq) status(e.message, true);
  } finally {
    if (seq === state.seq) document.body.classList.remove("busy");
  }
}

function showResults(answer, append) {
  const list = $("results");
  if (!append) {
    list.querySelectorAll("img").forEach((i) => i.src.startsWith("blob:") && URL.revokeObjectURL(i.src));
    list.replaceChildren();
  }
  answer.results.forEach((hit, n) => {
    const li = document.createElement("li");
    const fig = document.createElement("figure");
    fig.className = "hit"; fig.tabIndex = 0; fig.dataset.id = hit.id; fig.dataset.path = hit.path;
    fig.title = `${hit.path} — click to search with it`;
    const im = document.createElement("img");
    im.alt = hit.path; im.loading = "lazy";
    imageURL(`/api/images/${hit.id}/thumb?size=256`).then((u) => { im.src = u; }).catch(() => { im.alt = "unreadable"; });
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<span class="rank">#${answer.offset + n + 1}</span> <span class="score"></span> <span class="path"></span>`;
    cap.querySelector(".score").textContent = hit.score.toFixed(3);
    cap.querySelector(".path").textContent = hit.path.split("/").pop();
    fig.append(im, cap);
    fig.addEventListener("click", () => setQueryId(hit.id));
    fig.addEventListener("keydown", (e) => { if (e.key === "Enter") setQueryId(hit.id); });
    li.append(fig);
    list.append(li);
  });
  $("more").hidden = !answer.more;
}

$("more").addEventListener("click", () => search(true));

// --- adding the query photo to the collection (only when the server allows uploads) -------------
$("add").addEventListener("click", async () => {
  if (!state.file) { status("pick a photo from your device to add it", true); return; }
  const form = new FormData();
  form.append("files", state.file, state.file.name || "pasted.png");
  try {
    const answer = await (await api("/api/images", { method: "POST", body: form })).json();
    state.info.images = answer.images;
    showInfo();
    status(`added ${answer.added.join(", ")}`);
  } catch (e) { status(e.message, true); }
});

$("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  localStorage.setItem("deepret-token", token);
  $("auth").hidden = true;
  loadInfo().then(() => search());
});

loadInfo();

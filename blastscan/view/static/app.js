// blastscan view: the page's only script (no libraries, nothing fetched from elsewhere).
"use strict";

const state = { bundle: null, uploads: [] };
const $ = (sel, root = document) => root.querySelector(sel);
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "n/a" : Number(x).toFixed(d);
const pct = (x) => (x === null || x === undefined) ? "n/a" : `${Math.round(100 * x)}%`;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// The access token: given in the page's URL (?token=..., printed by blastscan view); every API call
// sends it as a header (the server refuses calls without it).
const TOKEN = new URL(window.location.href).searchParams.get("token") || "";

async function api(path, options = {}) {
  const headers = Object.assign({ "X-Blastscan": "1", "X-Blastscan-Token": TOKEN }, options.headers || {});
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  let body;
  try { body = await resp.json(); } catch (e) { body = { error: `${resp.status} ${resp.statusText}` }; }
  if (!resp.ok) throw new Error(body.error || `${resp.status} ${resp.statusText}`);
  return body;
}

// ---- the bundle ---------------------------------------------------------------------------------
function showBundle(b) {
  state.bundle = b;
  $("#notice").textContent = b.notice;
  $("#model-line").textContent = `${b.file}: ${b.feature_set} / ${b.classifier}, ALL when P(ALL) \u2265 ${fmt(b.threshold.value, 4)}`;
  $("#limit").textContent = `Uploads up to ${(b.max_upload_bytes / 1048576).toFixed(0)} MB each; they are deleted once scored.`;
  const m = (b.training_metrics || {}).metrics || {};
  const d = b.training_data || {};
  const dl = el("dl");
  const add = (k, v) => { dl.append(el("dt", { text: k }), el("dd", { text: v })); };
  add("feature set", `${b.feature_set} (${b.n_features} features)`);
  add("classifier", b.classifier);
  add("threshold", `P(ALL) \u2265 ${fmt(b.threshold.value, 4)}: ${b.threshold.rule_text}`);
  add("threshold chosen on", b.threshold.chosen_on);
  add("training metrics", `weighted F1 ${fmt(m.weighted_f1)}, ALL recall ${fmt(m.recall_all)}, ` +
      `specificity ${fmt(m.specificity)}, balanced accuracy ${fmt(m.balanced_accuracy)}, ROC-AUC ${fmt(m.roc_auc)}`);
  add("their split", (b.training_metrics || {}).split || "none");
  add("training data", `${d.n_images} cells: ${d.n_all} ALL from ${d.n_subjects_all} subjects, ` +
      `${d.n_hem} HEM from ${d.n_subjects_hem} subjects` + (d.dataset ? ` (${d.dataset})` : ""));
  add("made", `${b.created || "?"} with blastscan ${b.blastscan_version || "?"}`);
  add("beside each cell", b.has_reference
    ? `${b.has_handcrafted ? "key handcrafted features against the training cells; " : "no handcrafted features in this model; "}` +
      `nearest of ${b.n_reference_cells} training cells kept in the bundle`
    : "this bundle carries no training reference (made before blastscan view): retrain or re-export it to see feature distributions and nearest cells");
  add("features computed into", b.store || "a temporary store, removed when the server stops");
  for (const n of (b.training_metrics || {}).notes || []) add("note", n);
  for (const w of b.warnings || []) add("warning", w);
  add("use", b.notice);
  $("#bundle-info").replaceChildren(dl);
}

// ---- one cell -----------------------------------------------------------------------------------
function featurePlot(f) {
  const W = 230, H = 34, pad = 6;
  const qs = Object.values(f.classes).flatMap((c) => [c.q["5"], c.q["95"]]).concat([f.value]);
  let lo = Math.min(...qs), hi = Math.max(...qs);
  if (hi <= lo) { hi = lo + 1; }
  const x = (v) => pad + (W - 2 * pad) * (v - lo) / (hi - lo);
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "fplot", role: "img",
    "aria-label": "training ALL and HEM cells (5-95% line, 25-75% box, median) and this cell" });
  const rows = [["all", 9, "#c0392b"], ["hem", 24, "#2471a3"]];
  for (const [cls, y, colour] of rows) {
    const c = f.classes[cls];
    if (!c) continue;
    s.append(svg("line", { x1: x(c.q["5"]), x2: x(c.q["95"]), y1: y, y2: y, stroke: colour, "stroke-width": 1.5 }));
    s.append(svg("rect", { x: x(c.q["25"]), y: y - 4, width: Math.max(1, x(c.q["75"]) - x(c.q["25"])), height: 8,
      fill: colour, "fill-opacity": 0.35, stroke: colour }));
    s.append(svg("line", { x1: x(c.q["50"]), x2: x(c.q["50"]), y1: y - 4, y2: y + 4, stroke: colour, "stroke-width": 2 }));
  }
  s.append(svg("line", { x1: x(f.value), x2: x(f.value), y1: 1, y2: H - 1, stroke: "#111", "stroke-width": 2 }));
  return s;
}

function featureTable(res) {
  const box = el("div");
  if (!res.features || !res.features.length) return box;
  box.append(el("h4", { text: "Features that matter most to this model" }),
    el("p", { class: "muted small", text: `Ranked by ${res.importance_rule}. ` +
      "Bars: training cells, ALL (red) and HEM (blue), 5-95% line, 25-75% box, median; black: this cell." }));
  const t = el("table", { class: "ftable" });
  t.append(el("thead", {}, el("tr", {}, el("th", { text: "feature" }), el("th", { text: "this cell" }),
    el("th", { class: "nowrap", text: "percentile ALL / HEM" }), el("th", { text: "" }))));
  const tb = el("tbody");
  for (const f of res.features) {
    const name = el("td", { class: "fname", title: f.definition }, el("span", { text: f.name }));
    const a = f.classes.all ? `p${Math.round(f.classes.all.percentile)}` : "n/a";
    const h = f.classes.hem ? `p${Math.round(f.classes.hem.percentile)}` : "n/a";
    const plot = el("td");
    plot.append(featurePlot(f));
    tb.append(el("tr", {}, name, el("td", { class: "num", text: `${Number(f.value).toPrecision(4)}${f.unit && f.unit !== "1" ? " " + f.unit : ""}` }),
      el("td", { class: "num", text: `${a} / ${h}` }), plot));
  }
  t.append(tb);
  box.append(t);
  return box;
}

function neighbourStrip(res) {
  const box = el("div");
  if (!res.neighbours || !res.neighbours.length) return box;
  box.append(el("h4", { text: "Nearest training cells" }), el("p", { class: "muted small",
    text: `${res.neighbour_rule}. Caption: class \u00b7 subject \u00b7 distance.` }));
  const strip = el("div", { class: "strip" });
  for (const n of res.neighbours) {
    const fig = el("figure", { class: `nb ${n.label}` });
    fig.append(el("img", { src: n.image, alt: `training ${n.label.toUpperCase()} cell` }),
      el("figcaption", { text: n.same_image ? `${n.label.toUpperCase()} \u00b7 this very image` :
        `${n.label.toUpperCase()} \u00b7 ${n.subject || "?"} \u00b7 d ${fmt(n.distance, 1)}` }));
    if (n.same_image) fig.title = "The uploaded file is this training cell (same sha256): the model has seen it.";
    strip.append(fig);
  }
  box.append(strip);
  return box;
}

function cellCard(res) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  card.dataset.status = res.status;
  $(".cell-name", card).textContent = res.name;
  $(".cell-subject", card).textContent = res.subject ? `subject ${res.subject}` : "no subject in the file name";
  const img = $(".cell-image img", card);
  if (res.image) img.src = res.image; else img.remove();
  $(".outline-note", card).textContent = res.outline_note || "";
  if (!res.image || res.outline_note) $(".legend", card).remove();
  if (res.p_all === null || res.p_all === undefined) {
    $(".verdict", card).remove();
    $(".pbar", card).remove();
    $(".status", card).textContent = `not scored: ${res.status}`;
    $(".status", card).classList.add("bad");
  } else {
    $(".p-all", card).textContent = fmt(res.p_all, 3);
    const call = $(".call", card);
    call.textContent = res.pred.toUpperCase();
    call.classList.add(res.pred);
    $(".pfill", card).style.width = `${100 * res.p_all}%`;
    $(".pfill", card).classList.add(res.pred);
    $(".pthr", card).style.left = `${100 * res.threshold}%`;
    $(".threshold", card).textContent = `called ALL when P(ALL) \u2265 ${fmt(res.threshold, 4)} (the bundle's threshold)`;
    $(".status", card).remove();
  }
  $(".features", card).replaceWith(featureTable(res));
  $(".neighbours", card).replaceWith(neighbourStrip(res));
  return card;
}

// ---- uploads --------------------------------------------------------------------------------------
async function uploadOne(file) {
  const placeholder = el("article", { class: "cell-card pending" }, el("p", { text: `scoring ${file.name}...` }));
  $("#results").prepend(placeholder);
  try {
    if (state.bundle && file.size > state.bundle.max_upload_bytes) {
      throw new Error(`${file.name}: file of ${(file.size / 1048576).toFixed(1)} MB is over the upload limit of ` +
        `${(state.bundle.max_upload_bytes / 1048576).toFixed(1)} MB (blastscan view --max-upload-mb)`);
    }
    const res = await api(`/api/cell?name=${encodeURIComponent(file.name)}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    placeholder.replaceWith(cellCard(res));
    state.uploads.push({ subject: res.subject, p_all: res.p_all, pred: res.pred });
    await refreshSummary(state.uploads, "uploaded cells");
  } catch (err) {
    const card = el("article", { class: "cell-card error", "data-status": "error" },
      el("p", { class: "status bad", text: err.message.startsWith(file.name) ? err.message
        : `${file.name}: ${err instanceof TypeError ? "could not be sent to the server" : "refused"} (${err.message})` }));
    placeholder.replaceWith(card);
  }
}

async function handleFiles(files) {
  for (const f of Array.from(files)) await uploadOne(f);  // one at a time: the server scores serially
}

async function refreshSummary(rows, what) {
  // a summary once there is something to sum: two cells or more, with a subject in their names
  if (rows.length < 2 || !rows.some((r) => r.subject)) return;
  const { subjects } = await api("/api/subjects", { method: "POST", body: JSON.stringify({ rows }),
    headers: { "Content-Type": "application/json" } });
  showSubjects(subjects, what);
}

function showSubjects(subjects, what) {
  if (!subjects.length) { $("#summary").hidden = true; return; }
  $("#summary").hidden = false;
  $("#summary-rule").textContent = `${what}; ${subjects[0].rule}. Blast fraction: the share predicted ALL corrected for the model's ` +
    "training recall and specificity, with an interval that carries how much those vary from patient to patient.";
  const tb = $("#summary-table tbody");
  tb.replaceChildren();
  for (const s of subjects) {
    tb.append(el("tr", {}, el("td", { text: s.subject }), el("td", { class: "num", text: s.n_cells }),
      el("td", { class: "num", text: s.n_scored }), el("td", { class: "num", text: s.n_pred_all }),
      el("td", { class: "num", text: pct(s.fraction_pred_all) }),
      el("td", { class: "num", text: `${pct(s.blast_fraction)} [${pct(s.blast_fraction_low)}, ${pct(s.blast_fraction_high)}]` +
        (s.blast_fraction_status && s.blast_fraction_status !== "ok" ? ` (${s.blast_fraction_status})` : "") }),
      el("td", { class: "num", text: fmt(s.mean_p_all) }),
      el("td", { class: `call ${s.call}`, text: (s.call || "none").toUpperCase() })));
  }
}

// ---- batches of server-side files ---------------------------------------------------------------
async function runBatch(path) {
  const status = $("#batch-status");
  status.textContent = "starting...";
  status.classList.remove("bad");
  try {
    const { id } = await api("/api/batch", { method: "POST", body: JSON.stringify({ path }),
      headers: { "Content-Type": "application/json" } });
    for (;;) {
      const job = await api(`/api/batch/${id}`);
      if (job.state === "failed") throw new Error(job.error);
      if (job.state === "done") { showBatch(job); status.textContent = ""; return; }
      status.textContent = job.total === null ? "checking files..." : `scored ${job.done} of ${job.total}...`;
      await new Promise((r) => setTimeout(r, 400));
    }
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("bad");
  }
}

function showBatch(job) {
  $("#batch").hidden = false;
  const ok = job.rows.filter((r) => r.status === "ok");
  const nAll = ok.filter((r) => r.pred === "all").length;
  $("#batch-title").textContent = `${job.path}: ${ok.length} of ${job.rows.length} scored, ${nAll} predicted ALL; click a row for the cell`;
  const tb = $("#batch-table tbody");
  tb.replaceChildren();
  job.rows.forEach((r, i) => {
    const tr = el("tr", { class: "clickable", title: r.path }, el("td", { text: r.path.split("/").pop() }),
      el("td", { text: r.subject }), el("td", { class: "num", text: fmt(r.p_all) }),
      el("td", { class: `call ${r.pred}`, text: (r.pred || "").toUpperCase() }),
      el("td", { class: r.status === "ok" ? "" : "bad", text: r.status }));
    tr.addEventListener("click", async () => {
      try { $("#results").prepend(cellCard(await api(`/api/batch/${job.id}/cell/${i}`))); }
      catch (err) { $("#batch-status").textContent = err.message; }
      $("#results").scrollIntoView({ behavior: "smooth" });
    });
    tb.append(tr);
  });
  showSubjects(job.subjects, `batch ${job.path}`);
}

// ---- wiring ---------------------------------------------------------------------------------------
window.addEventListener("DOMContentLoaded", async () => {
  const drop = $("#drop");
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
  // a file dropped next to the zone must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("#files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  $("#batch-form").addEventListener("submit", (e) => { e.preventDefault(); const p = $("#batch-path").value.trim(); if (p) runBatch(p); });
  try { showBundle(await api("/api/bundle")); }
  catch (err) { $("#model-line").textContent = `cannot read the bundle: ${err.message}`; }
});

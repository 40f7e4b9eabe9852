// diffinfer demo page: three views over the JSON API of diffinfer.web.app (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
let OPTIONS = null;

function fillSelect(sel, values, chosen) {
  sel.innerHTML = "";
  for (const v of values) {
    const o = document.createElement("option");
    o.value = v; o.textContent = v;
    if (v === chosen) o.selected = true;
    sel.appendChild(o);
  }
}

// POST a JSON body; resolves to the answer, or throws an Error with the server's message
async function post(path, body) {
  let resp;
  try {
    resp = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (e) {
    throw new Error("the server did not answer (" + e.message + ")");
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.error) || ("HTTP " + resp.status));
  return data;
}

// run an async action with its button disabled and errors shown in errorBox
async function busy(button, errorBox, action) {
  errorBox.textContent = "";
  button.disabled = true;
  const label = button.textContent;
  button.textContent = "working...";
  try { await action(); }
  catch (e) { errorBox.textContent = e.message; }
  finally { button.disabled = false; button.textContent = label; }
}

// fields are sent as typed: the server checks them and names what is wrong
const val = (id) => $(id).value.trim();

// --- tabs ------------------------------------------------------------------------------
for (const b of document.querySelectorAll("nav button")) {
  b.addEventListener("click", () => {
    for (const x of document.querySelectorAll("nav button")) x.classList.toggle("active", x === b);
    for (const s of document.querySelectorAll("section")) s.classList.toggle("active", s.id === "view-" + b.dataset.view);
  });
}

// --- digits ----------------------------------------------------------------------------
function digitsBody(solver) {
  return { model: val("d-model"), solver: solver, steps: val("d-steps"), grid: val("d-grid"),
           label: val("d-label"), guidance: val("d-guidance"), n: val("d-n"), seed: val("d-seed") };
}
const describe = (r) => `${r.solver}, ${r.steps} steps, grid ${r.grid}: NFE ${r.nfe}, ${r.wall_time.toFixed(2)} s`;

$("d-sample").addEventListener("click", () => busy($("d-sample"), $("d-error"), async () => {
  const r = await post("/api/digits", digitsBody(val("d-solver")));
  $("d-image").src = r.image;
  $("d-info").textContent = describe(r) + ` (seed ${r.seed})`;
}));

$("c-compare").addEventListener("click", () => busy($("c-compare"), $("d-error"), async () => {
  const a = await post("/api/digits", digitsBody(val("c-solver-a")));
  const b = await post("/api/digits", digitsBody(val("c-solver-b")));
  $("c-image-a").src = a.image; $("c-info-a").textContent = describe(a);
  $("c-image-b").src = b.image; $("c-info-b").textContent = describe(b);
}));

// --- text ------------------------------------------------------------------------------
const TEXT = { frames: [], firstShown: [], timer: null, cols: 64, prompt: "", layout: null };

function syncTextFields() {
  const selfPaced = OPTIONS.self_paced.includes(val("t-policy"));
  $("t-steps").disabled = selfPaced;
  if (selfPaced) $("t-steps").value = "";
  $("t-steps").placeholder = selfPaced ? "set by the policy" : "one per token";
  const thr = ["threshold", "confident"].includes(val("t-policy"));
  $("t-threshold").disabled = !thr;
}

// for frame f: the step at which each shown character appeared (remasked ones reappear later)
function firstShown(frames, maskChar) {
  const out = [];
  let cur = Array.from(frames[0] || "", (c) => (c === maskChar ? -1 : 0));
  out.push(cur);
  for (let f = 1; f < frames.length; f++) {
    const prev = Array.from(frames[f - 1]), now = Array.from(frames[f]);
    cur = now.map((c, p) => (c === maskChar ? -1 : (prev[p] === maskChar ? f : cur[p])));
    out.push(cur);
  }
  return out;
}

// fixed places for the characters: the prompt, then the final text's lines (nothing moves
// while the decode fills in the masks)
function layout(prompt, finalText) {
  const places = [];
  let row = 0, col = 0;
  const advance = (c) => { col++; if (col >= TEXT.cols || c === "\n") { col = 0; row++; } };
  for (const c of Array.from(prompt)) advance(c);
  for (const c of Array.from(finalText)) { places.push([row, col]); advance(c); }
  return { places, rows: row + 1 };
}

function drawFrame(f) {
  const cv = $("text-canvas"), ctx = cv.getContext("2d");
  const chars = Array.from(TEXT.frames[f]), shown = TEXT.firstShown[f];
  const cw = 13.5, lh = 20, x0 = 12, y0 = 22;
  const steps = Math.max(1, TEXT.frames.length - 1);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, cv.width, cv.height);
  ctx.font = "15px monospace"; ctx.textBaseline = "alphabetic";
  let row = 0, col = 0;
  ctx.fillStyle = "#000";
  for (const c of Array.from(TEXT.prompt)) {  // the prompt, given: black
    if (c !== "\n") ctx.fillText(c, x0 + col * cw + 2, y0 + row * lh);
    col++;
    if (col >= TEXT.cols || c === "\n") { col = 0; row++; }
  }
  for (let p = 0; p < chars.length; p++) {
    const [r, c] = TEXT.layout.places[p];
    const x = x0 + c * cw, y = y0 + r * lh;
    if (shown[p] < 0) {
      ctx.fillStyle = "#ddd"; ctx.fillRect(x, y - 13, cw - 2, 16);
    } else {
      const hue = 240 - 240 * (shown[p] / steps);
      ctx.fillStyle = `hsl(${hue}, 75%, ${shown[p] === f && f > 0 ? 90 : 96}%)`;
      ctx.fillRect(x, y - 13, cw - 1, 16);
      ctx.fillStyle = `hsl(${hue}, 75%, 38%)`;
      ctx.fillText(chars[p] === "\n" ? "\u21b5" : chars[p], x + 2, y);
    }
  }
  cv.dataset.frame = String(f);
  $("t-scrub").value = String(f);
  const masked = shown.filter((s) => s < 0).length;
  $("t-info").dataset.step = String(f);
  $("t-info").textContent = TEXT.summary + ` | step ${f + 1} / ${TEXT.frames.length}, ${masked} still masked`;
}

function play() {
  clearInterval(TEXT.timer);
  let f = 0;
  const delay = Math.max(15, Math.min(120, 4000 / TEXT.frames.length));
  drawFrame(0);
  TEXT.timer = setInterval(() => {
    f++;
    if (f >= TEXT.frames.length) { clearInterval(TEXT.timer); return; }
    drawFrame(f);
  }, delay);
}

$("t-policy").addEventListener("change", syncTextFields);
$("t-decode").addEventListener("click", () => busy($("t-decode"), $("t-error"), async () => {
  const body = { policy: val("t-policy"), length: val("t-length"), temperature: val("t-temperature"),
                 block: val("t-block"), seed: val("t-seed"), prompt: $("t-prompt").value };
  if (!$("t-steps").disabled) body.steps = val("t-steps");
  if (!$("t-threshold").disabled) body.threshold = val("t-threshold");
  const r = await post("/api/text", body);
  TEXT.frames = r.frames;
  TEXT.firstShown = firstShown(r.frames, r.mask_char);
  TEXT.summary = `${r.policy}: ${r.length} characters in ${r.steps} steps, NFE ${r.nfe}, ${r.wall_time.toFixed(2)} s`
    + (r.prompt ? ` after the prompt "${r.prompt}"` : "");
  $("t-scrub").max = String(r.frames.length - 1);
  TEXT.prompt = r.prompt;
  TEXT.layout = layout(r.prompt, r.frames[r.frames.length - 1]);
  $("text-canvas").height = Math.max(120, 22 + TEXT.layout.rows * 20 + 8);
  play();
}));
$("t-replay").addEventListener("click", () => { if (TEXT.frames.length) play(); });
$("t-scrub").addEventListener("input", () => { clearInterval(TEXT.timer); if (TEXT.frames.length) drawFrame(+$("t-scrub").value); });

// --- inpainting ------------------------------------------------------------------------
const INV = { pixels: new Array(64).fill(0), mask: new Array(64).fill(1), drawing: false, erase: false };

function drawMaskCanvas() {
  const cv = $("mask-canvas"), ctx = cv.getContext("2d"), s = cv.width / 8;
  for (let i = 0; i < 64; i++) {
    const r = Math.floor(i / 8), c = i % 8, g = Math.round(255 * (1 - INV.pixels[i]));
    ctx.fillStyle = `rgb(${g},${g},${g})`;
    ctx.fillRect(c * s, r * s, s, s);
    if (!INV.mask[i]) {
      ctx.fillStyle = "rgba(220, 40, 40, 0.55)";
      ctx.fillRect(c * s, r * s, s, s);
    }
  }
  ctx.strokeStyle = "#ccc";
  for (let k = 0; k <= 8; k++) {
    ctx.beginPath(); ctx.moveTo(k * s, 0); ctx.lineTo(k * s, cv.height); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(0, k * s); ctx.lineTo(cv.width, k * s); ctx.stroke();
  }
  const holes = INV.mask.filter((m) => m === 0).length;
  $("i-holes").textContent = `${holes} of 64 pixels to fill`;
  $("i-holes").dataset.holes = String(holes);
}

function paintAt(ev) {
  const cv = $("mask-canvas"), rect = cv.getBoundingClientRect();
  const c = Math.floor(((ev.clientX - rect.left) / rect.width) * 8);
  const r = Math.floor(((ev.clientY - rect.top) / rect.height) * 8);
  if (r < 0 || r > 7 || c < 0 || c > 7) return;
  INV.mask[r * 8 + c] = INV.erase ? 1 : 0;
  drawMaskCanvas();
}

$("mask-canvas").addEventListener("mousedown", (ev) => { INV.drawing = true; INV.erase = ev.shiftKey; paintAt(ev); });
$("mask-canvas").addEventListener("mousemove", (ev) => { if (INV.drawing) paintAt(ev); });
window.addEventListener("mouseup", () => { INV.drawing = false; });

async function loadDigit() {
  $("i-error").textContent = "";
  const resp = await fetch("/api/digit/" + encodeURIComponent(val("i-index") || "0"));
  const data = await resp.json();
  if (!resp.ok) { $("i-error").textContent = data.error || ("HTTP " + resp.status); return; }
  INV.pixels = data.pixels;
  drawMaskCanvas();
}

$("i-load").addEventListener("click", loadDigit);
$("i-clear").addEventListener("click", () => { INV.mask.fill(1); drawMaskCanvas(); });
$("i-box").addEventListener("click", () => {
  INV.mask.fill(1);
  for (let r = 2; r < 6; r++) for (let c = 2; c < 6; c++) INV.mask[r * 8 + c] = 0;
  drawMaskCanvas();
});
$("i-method").addEventListener("change", () => { $("i-steps").value = String(OPTIONS.inpaint_steps[val("i-method")]); });
$("i-inpaint").addEventListener("click", () => busy($("i-inpaint"), $("i-error"), async () => {
  const r = await post("/api/inpaint", { method: val("i-method"), index: val("i-index"), mask: INV.mask,
                                         steps: val("i-steps"), n: val("i-n"), noise: val("i-noise"), seed: val("i-seed") });
  $("i-image").src = r.image;
  $("i-info").textContent = `${r.method}, ${r.steps} steps, ${r.holes} holes: NFE ${r.nfe}, ${r.wall_time.toFixed(2)} s;`
    + ` PSNR to the input ${r.psnr.join(", ")} dB`;
}));

// --- start -----------------------------------------------------------------------------
async function start() {
  const resp = await fetch("/api/options");
  OPTIONS = await resp.json();
  fillSelect($("d-model"), OPTIONS.digit_models, "digits");
  fillSelect($("d-solver"), OPTIONS.solvers, OPTIONS.default_solver);
  fillSelect($("d-grid"), OPTIONS.grids, "default");
  for (let k = 0; k < 10; k++) { const o = document.createElement("option"); o.value = String(k); o.textContent = String(k); $("d-label").appendChild(o); }
  fillSelect($("c-solver-a"), OPTIONS.solvers, "ddim");
  fillSelect($("c-solver-b"), OPTIONS.solvers, OPTIONS.default_solver);
  fillSelect($("t-policy"), OPTIONS.policies, "low-confidence");
  fillSelect($("i-method"), OPTIONS.methods, "dps");
  $("d-grid").title = "fitted grids: " + (OPTIONS.fitted.digits || []).join(", ");
  syncTextFields();
  await loadDigit();
  document.body.dataset.ready = "1";
}
start().catch((e) => { $("d-error").textContent = "could not load the options: " + e.message; });

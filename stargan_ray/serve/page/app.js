// The stargan-ray page: plain JavaScript, everything from this server (no external assets).
"use strict";

const $ = (id) => document.getElementById(id);
let source = null;      // the chosen photo (File)
let lastStyles = [];    // [{label, seed|ref}] of the shown outputs, for the slider
let mixFrames = [];     // interpolated outputs, one per slider position
let maxOutputs = 9;     // the server's limit per request (GET /domains)
let clip = null;        // the chosen video (File)

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || JSON.stringify(body);
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

// The bearer token of the Token field (a server started with a token requires it on the API).
function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

let domainsAsked = 0;   // only the latest /domains request fills the page (the token may change)

async function loadDomains() {
  const mine = ++domainsAsked;
  showError("");
  $("domain").replaceChildren();
  try {
    const response = await fetch("/domains", { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorText(response));
    const info = await response.json();
    if (mine !== domainsAsked) return;
    maxOutputs = info.max_outputs;
    for (const [i, name] of info.domains.entries()) {
      $("domain").add(new Option(name, String(i)));
    }
    setStatus(`${info.domains.length} domains, ${info.img_size} px model`);
    $("video-limits").textContent = `A short clip in the domain above, in one style (the seed ` +
      `below, or the first reference image when styles come from references): at most ` +
      `${info.max_video_seconds} s, ${info.max_video_frames} frames, ` +
      `${info.max_frame_pixels} pixels per frame and ${(info.max_bytes / 2 ** 20).toFixed(1)} MB.`;
  } catch (err) {
    if (mine === domainsAsked) showError(`Cannot list the model's domains: ${err.message}`);
  }
}

function chooseSource(file) {
  if (!file) return;
  source = file;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-text").hidden = true;
  $("translate").disabled = false;
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

// One POST /translate; returns [{label, url}] whether the server sent one PNG or JSON.
async function translate(extra) {
  const form = new FormData();
  form.append("image", source);
  form.append("domain", $("domain").value);
  if (mode() === "reference") {
    const refs = extra.refs || Array.from($("reference-input").files);
    if (!refs.length) throw new Error("reference: choose one or more reference images");
    refs.forEach((file) => form.append("reference", file));
  } else {
    form.append("seeds", extra.seeds || $("seeds").value);
    form.append("psi", $("psi").value);
  }
  if (extra.steps) form.append("steps", String(extra.steps));
  const response = await fetch("/translate",
    { method: "POST", body: form, headers: authHeaders() });
  if (!response.ok) throw new Error(await errorText(response));
  if ((response.headers.get("content-type") || "").startsWith("image/png")) {
    const label = response.headers.get("x-output-label") || "output";
    return [{ label, url: URL.createObjectURL(await response.blob()) }];
  }
  const body = await response.json();
  return body.outputs.map((o) => ({ label: o.label, url: `data:image/png;base64,${o.png}` }));
}

function figure(output) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = output.url;
  img.alt = output.label;
  img.className = "output";
  const caption = document.createElement("figcaption");
  caption.textContent = output.label;
  fig.append(img, caption);
  return fig;
}

async function run() {
  showError("");
  $("translate").disabled = true;
  setStatus("translating ...");
  try {
    const outputs = await translate({});
    $("outputs").replaceChildren(...outputs.map(figure));
    setStatus(`${outputs.length} output(s) for ${$("domain").selectedOptions[0].text}`);
    prepareMix(outputs);
  } catch (err) {
    showError(err.message);
    setStatus("");
  } finally {
    $("translate").disabled = false;
  }
}

// The slider: styles of two shown outputs, interpolated by the server in up to 9 steps.
function prepareMix(outputs) {
  const refs = Array.from($("reference-input").files);
  lastStyles = outputs.map((o, i) => (mode() === "reference"
    ? { label: o.label, ref: refs[i] } : { label: o.label, seed: o.label.replace("seed", "") }));
  $("mix").hidden = lastStyles.length < 2;
  if (lastStyles.length < 2) return;
  for (const sel of [$("mix-from"), $("mix-to")]) {
    sel.replaceChildren(...lastStyles.map((s, i) => new Option(s.label, String(i))));
  }
  $("mix-to").value = "1";
  loadMix();
}

async function loadMix() {
  const a = lastStyles[Number($("mix-from").value)];
  const b = lastStyles[Number($("mix-to").value)];
  $("mix-slider").disabled = true;
  try {
    const extra = a.ref ? { refs: [a.ref, b.ref] } : { seeds: `${a.seed},${b.seed}` };
    if (a === b) throw new Error("slider: pick two different styles");
    mixFrames = await translate({ ...extra, steps: Math.min(9, maxOutputs) });
    $("mix-slider").max = String(mixFrames.length - 1);
    $("mix-slider").disabled = false;
    showMix();
  } catch (err) {
    showError(err.message);
  }
}

function showMix() {
  const frame = mixFrames[Number($("mix-slider").value)];
  if (!frame) return;
  $("mix-image").src = frame.url;
  $("mix-label").textContent = frame.label;
}

// POST /translate_video: the clip in one style comes back as an mp4 for the <video> element.
async function runVideo() {
  showError("");
  $("translate-video").disabled = true;
  $("video-status").textContent = "translating the clip ...";
  try {
    const form = new FormData();
    form.append("video", clip);
    form.append("domain", $("domain").value);
    if (mode() === "reference") {
      const ref = $("reference-input").files[0];
      if (!ref) throw new Error("reference: choose a reference image");
      form.append("reference", ref);
    } else {
      form.append("seed", $("video-seed").value);
      form.append("psi", $("psi").value);
    }
    const response = await fetch("/translate_video",
      { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) throw new Error(await errorText(response));
    const frames = response.headers.get("x-frames");
    const fps = response.headers.get("x-fps");
    const video = $("video-output");
    if (video.src) URL.revokeObjectURL(video.src);
    video.src = URL.createObjectURL(await response.blob());
    video.hidden = false;
    $("video-status").textContent = `${frames} frames at ${fps} fps`;
  } catch (err) {
    showError(err.message);
    $("video-status").textContent = "";
  } finally {
    $("translate-video").disabled = false;
  }
}

$("video-input").addEventListener("change", (e) => {
  clip = e.target.files[0] || null;
  $("translate-video").disabled = !clip;
});
$("translate-video").addEventListener("click", runVideo);
$("image-input").addEventListener("change", (e) => chooseSource(e.target.files[0]));
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  chooseSource(e.dataTransfer.files[0]);
});
$("translate").addEventListener("click", run);
$("token").addEventListener("change", loadDomains);
$("mix-from").addEventListener("change", loadMix);
$("mix-to").addEventListener("change", loadMix);
$("mix-slider").addEventListener("input", showMix);
loadDomains();

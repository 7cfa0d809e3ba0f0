// vladsearch page: search by a dropped or chosen image, view matches, add images. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: null, queryUrl: null, queryName: "", blobs: [] };

function readToken() {
  const fromUrl = new URLSearchParams(location.search).get("token");
  if (fromUrl) {
    localStorage.setItem("vladsearch-token", fromUrl);
    history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  state.token = localStorage.getItem("vladsearch-token");
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) $("token-form").hidden = false;
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// Image URLs of the API need the token too: fetch them and show object URLs.
async function imageUrl(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  state.blobs.push(url);
  return url;
}

function apiPath(image, suffix = "") {
  return "/api/images/" + image.split("/").map(encodeURIComponent).join("/") + suffix;
}

async function refreshCounts() {
  try {
    const info = await (await api("/api/info")).json();
    const c = info.counts;
    $("counts").textContent = `${c.indexed.toLocaleString()} images indexed · ${c.vectors.toLocaleString()} vectors · `
      + `${c.segments} segments · commit ${info.commits}`;
    $("counts").title = `root ${info.root}; ${info.features.name || ""} features, ${info.params.clusters} words`;
  } catch (error) {
    $("counts").textContent = `index: ${error.message}`;
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function search(file) {
  state.blobs.forEach(URL.revokeObjectURL);
  state.blobs = [];
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = URL.createObjectURL(file);
  state.queryName = file.name;
  $("query-preview").src = state.queryUrl;
  $("query-preview").hidden = false;
  $("drop-text").innerHTML = `<strong>${escapeHtml(file.name)}</strong><br>drop or click for another`;
  $("results").replaceChildren();
  setStatus(`Searching with ${file.name}…`);
  // Unverified candidates always come back (after the confirmed ones); the toggle only shows or hides them.
  const params = new URLSearchParams({ top: $("top").value || "12", unverified: "true" });
  const body = new FormData();
  body.append("image", file);
  $("answer").hidden = true;
  try {
    const result = await (await api(`/api/search?${params}`, { method: "POST", body })).json();
    if (result.error) return setStatus(result.error, true);
    showAnswer(result);
    const confirmed = result.matches.filter((m) => m.verified).length;
    setStatus(`${confirmed} confirmed, ${result.matches.length - confirmed} unverified candidates for ${result.query} `
      + `in ${(result.seconds * 1000).toFixed(0)} ms`);
    showMatches(result.matches);
    applyToggle();
  } catch (error) {
    setStatus(`Search failed: ${error.message}`, true);
  }
}

const VERDICT_WORDS = { identical: "Identical to", copy: "A copy of", "same scene": "The same scene as" };

function verdictClass(verdict) {
  return "verdict-" + String(verdict || "none").replace(/\s+/g, "-");
}

function showAnswer(result) {
  const box = $("answer");
  const best = result.matches.find((m) => m.verified);
  box.className = "answer " + (best ? verdictClass(best.verdict) : "verdict-none");
  box.textContent = best
    ? `${VERDICT_WORDS[best.verdict] || "Matches"} ${best.image} (confidence ${best.confidence.toFixed(2)})`
    : "Not in the collection: no candidate was confirmed";
  box.hidden = false;
}

function applyToggle() {
  const show = $("show-unverified").checked;
  document.querySelectorAll("#results .match.unverified").forEach((item) => { item.hidden = !show; });
}

function showMatches(matches) {
  const list = $("results");
  matches.forEach((match, i) => {
    const item = document.createElement("li");
    item.className = "match" + (match.verified ? "" : " unverified");
    item.tabIndex = 0;
    item.dataset.image = match.image;
    const numbers = [`similarity ${match.score.toFixed(3)}`];
    if (match.verified) {
      numbers.unshift(`confidence ${match.confidence.toFixed(2)}`,
        match.verdict === "identical" ? "the same file" : `${match.inliers} inliers`);
    }
    const badge = match.verified
      ? `<span class="badge ${verdictClass(match.verdict)}">${escapeHtml(match.verdict)}${match.mirrored ? " (mirrored)" : ""}</span>`
      : `<span class="badge verdict-none">unverified</span>`;
    item.innerHTML = `<div class="thumb"><span class="rank">${i + 1}</span>${badge}`
      + `<img alt="${escapeHtml(match.image)}"></div>`
      + `<div class="meta"><div class="name" title="${escapeHtml(match.image)}">${escapeHtml(match.image)}</div>`
      + `<div class="numbers">${numbers.join(" · ")}</div></div>`;
    imageUrl(apiPath(match.image, "/thumbnail")).then((url) => { item.querySelector("img").src = url; })
      .catch((error) => {
        const note = document.createElement("span");
        note.className = "missing";
        note.textContent = "not viewable";
        note.title = error.message;
        item.querySelector("img").replaceWith(note);
      });
    const open = () => compare(match, i + 1);
    item.addEventListener("click", open);
    item.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
    list.appendChild(item);
  });
}

async function compare(match, rank) {
  $("compare-query").src = state.queryUrl;
  $("compare-query-name").textContent = `query: ${state.queryName}`;
  $("compare-match").removeAttribute("src");
  $("compare-match-name").textContent = `match ${rank}: ${match.image}`;
  const details = match.verified
    ? [match.verdict + (match.mirrored ? " (mirrored)" : ""), `confidence ${match.confidence.toFixed(2)}`,
      `${match.inliers} inliers`]
    : ["not confirmed"];
  details.push(`VLAD similarity ${match.score.toFixed(4)}`);
  $("compare-details").textContent = details.join(" · ");
  $("compare").showModal();
  try {
    $("compare-match").src = await imageUrl(apiPath(match.image));
  } catch (error) {
    $("compare-match-name").textContent += ` (${error.message})`;
  }
}

async function addImages() {
  const files = $("add-files").files;
  if (!files.length) return;
  const body = new FormData();
  for (const file of files) body.append("images", file);
  $("add-button").disabled = true;
  $("add-report").className = "report";
  $("add-report").textContent = `Uploading ${files.length} file(s)…`;
  try {
    const report = await (await api("/api/images", { method: "POST", body })).json();
    const skipped = report.skipped.map((s) => `${s.path}: ${s.reason}`);
    $("add-report").textContent = `Indexed ${report.indexed} as ${report.images.map((i) => i.image).join(", ")}`
      + (skipped.length ? `; skipped ${skipped.join("; ")}` : "");
    $("add-files").value = "";
    refreshCounts();
  } catch (error) {
    $("add-report").className = "report error";
    $("add-report").textContent = `Not added: ${error.message}`;
  } finally {
    $("add-button").disabled = false;
  }
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function setUp() {
  readToken();
  const drop = $("drop");
  $("query-file").addEventListener("change", (event) => { if (event.target.files[0]) search(event.target.files[0]); });
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) search(file);
  });
  $("add-button").addEventListener("click", addImages);
  $("show-unverified").addEventListener("change", applyToggle);
  $("compare-close").addEventListener("click", () => $("compare").close());
  $("compare").addEventListener("click", (event) => { if (event.target === $("compare")) $("compare").close(); });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem("vladsearch-token", state.token);
    $("token-form").hidden = true;
    refreshCounts();
  });
  refreshCounts();
  setInterval(refreshCounts, 5000);
}

document.addEventListener("DOMContentLoaded", setUp);

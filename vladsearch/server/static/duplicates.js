// vladsearch page, duplicates panel: find the groups, preview and move the extras aside, undo.
// The same server code as `vladsearch duplicates --move-to` and `vladsearch undo` (same manifest).
// Uses api() and $() from app.js.
"use strict";

const LAST_MANIFEST = "vladsearch-last-manifest";

function dupReport(lines, isError = false) {
  const report = $("dup-report");
  report.className = isError ? "report error" : "report";
  report.replaceChildren(...lines.map((line) => {
    const div = document.createElement("div");
    div.textContent = line;
    return div;
  }));
}

async function postJson(path, body) {
  return (await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) })).json();
}

function entryLines(result) {
  return result.entries.map((e) => {
    if (e.reason) return `left alone: ${e.image}: ${e.reason}`;
    if (e.problem) return `not done: ${e.image}: ${e.problem}`;
    return result.direction === "back" ? `${e.new} → ${e.old}` : `${e.image} → ${e.new}`;
  });
}

async function findDuplicates() {
  $("dup-find").disabled = true;
  $("dup-move").hidden = true;
  dupReport(["Finding duplicate groups…"]);
  try {
    const found = await (await api("/api/duplicates")).json();
    const preview = await postJson("/api/duplicates/move", { dry_run: true });
    const lines = found.groups.map((g, i) => `group ${i + 1}: keep ${g.keep}; extras `
      + g.remove.map((r) => (g.identical && g.identical[r] ? `${r} (identical)` : r)).join(", "));
    const count = preview.counts.planned || 0;
    lines.push(`${count} extras would move under ${preview.move_to} (dry run: nothing changed)`);
    dupReport(lines.concat(entryLines(preview).filter((line) => line.startsWith("left alone"))));
    $("dup-move").hidden = count === 0;
  } catch (error) {
    dupReport([`Duplicates: ${error.message}`], true);
  } finally {
    $("dup-find").disabled = false;
  }
}

async function moveExtras() {
  if (!confirm("Move every extra of each group aside? Nothing is deleted; Undo puts every file back.")) return;
  $("dup-move").disabled = true;
  try {
    const result = await postJson("/api/duplicates/move", { dry_run: false });
    localStorage.setItem(LAST_MANIFEST, result.manifest);
    dupReport([`Moved ${result.counts.moved || 0} files under ${result.move_to}; manifest ${result.manifest}`]
      .concat(entryLines(result)));
    $("dup-move").hidden = true;
    $("dup-undo").hidden = false;
    refreshCounts();
  } catch (error) {
    dupReport([`Not moved: ${error.message}`], true);
  } finally {
    $("dup-move").disabled = false;
  }
}

async function undoLastMove() {
  const manifest = localStorage.getItem(LAST_MANIFEST);
  if (!manifest) return;
  $("dup-undo").disabled = true;
  try {
    const result = await postJson("/api/undo", { manifest });
    localStorage.removeItem(LAST_MANIFEST);
    dupReport([`Restored ${result.counts.restored || 0} files to their old paths`].concat(entryLines(result)));
    $("dup-undo").hidden = true;
    refreshCounts();
  } catch (error) {
    dupReport([`Not undone: ${error.message}`], true);
  } finally {
    $("dup-undo").disabled = false;
  }
}

$("dup-find").addEventListener("click", findDuplicates);
$("dup-move").addEventListener("click", moveExtras);
$("dup-undo").addEventListener("click", undoLastMove);
$("dup-undo").hidden = !localStorage.getItem(LAST_MANIFEST);

// bcscan review: keyboard and mouse reclassification; each decision is POSTed and stored at once.
"use strict";
(function () {
  const token = document.querySelector('meta[name="review-token"]').content;
  const reviewer = document.getElementById("reviewer");
  reviewer.value = reviewer.value || localStorage.getItem("bcscan-reviewer") || "";
  reviewer.addEventListener("change", () => localStorage.setItem("bcscan-reviewer", reviewer.value.trim()));

  const signForm = document.getElementById("sign-off");
  if (signForm) {
    signForm.addEventListener("submit", (event) => {
      document.getElementById("sign-reviewer").value = reviewer.value.trim();
      if (!reviewer.value.trim()) { event.preventDefault(); say("Enter your name (Reviewer, top right) to sign off."); reviewer.focus(); }
    });
  }
  const cells = Array.from(document.querySelectorAll("figure.cell"));
  if (!cells.length) return;
  const keyToLabel = {};
  document.querySelectorAll(".label-button").forEach((button) => {
    for (const key of button.dataset.keys) keyToLabel[key] = button.dataset.label;
    button.addEventListener("click", () => decide(button.dataset.label));
  });
  let current = 0;

  function say(text) { document.getElementById("message").textContent = text; }

  function select(i) {
    current = Math.max(0, Math.min(cells.length - 1, i));
    cells.forEach((c, k) => c.classList.toggle("selected", k === current));
    const cell = cells[current];
    cell.focus({ preventScroll: true });
    cell.scrollIntoView({ block: "nearest" });
    document.querySelectorAll(".marker").forEach((m) => { m.hidden = true; });
    const scan = document.querySelector(`figure.scan[data-scan="${cell.dataset.scan}"] .marker`);
    if (scan && cell.dataset.left) {
      scan.style.left = cell.dataset.left + "%";
      scan.style.top = cell.dataset.top + "%";
      scan.hidden = false;
    }
    if (!document.getElementById("context").hidden) showContext();
    showHistory(cell);
  }

  async function showHistory(cell) {
    const line = document.getElementById("history");
    const response = await fetch(`/scan/${cell.dataset.scan}/cell/${cell.dataset.cell}/history`, { credentials: "same-origin" });
    if (!response.ok || cells[current] !== cell) return;
    const rows = await response.json();
    line.textContent = rows.length
      ? `Cell #${cell.dataset.cell}: ` + rows.map((r) => `${r.decided_at} ${r.reviewer}: ${r.previous_label || "model's call"} → ${r.label}${r.dropped_at ? " (set aside)" : ""}`).join("; ")
      : `Cell #${cell.dataset.cell}: no decision yet (the model's call stands).`;
  }

  function showContext() {
    const cell = cells[current], box = document.getElementById("context");
    box.querySelector("img").src = `/scan/${cell.dataset.scan}/cell/${cell.dataset.cell}/context.jpg`;
    box.hidden = false;
  }

  async function decide(label) {
    const name = reviewer.value.trim();
    if (!name) { say("Enter your name (Reviewer, top right) before deciding."); reviewer.focus(); return; }
    localStorage.setItem("bcscan-reviewer", name);
    const cell = cells[current];
    const response = await fetch("/decide", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Review-Token": token },
      body: JSON.stringify({ scan: Number(cell.dataset.scan), cell: Number(cell.dataset.cell), label: label, reviewer: name }),
    });
    const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) { say(`Not stored: ${answer.error || response.status}`); return; }
    cell.querySelector(".review-label").textContent = answer.label;
    cell.classList.add("decided");
    document.getElementById("n-blasts").textContent = answer.n_blasts;
    document.getElementById("n-cells").textContent = answer.n_cells;
    document.getElementById("pct").textContent = answer.pct_blasts.toFixed(2);
    document.getElementById("ci").textContent = `${answer.ci_low.toFixed(2)}–${answer.ci_high.toFixed(2)}`;
    if (answer.reopened) {
      const status = document.getElementById("signoff-status");
      status.textContent = "Sign-off reopened by this change: sign off again.";
      status.className = "unsigned";
    }
    say(`Stored: cell #${cell.dataset.cell} is ${answer.label} (was ${answer.previous_label || "the model's call"}).`);
    select(current + 1);
  }

  cells.forEach((cell, i) => cell.addEventListener("click", () => select(i)));
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "ArrowRight" || event.key === "ArrowDown") { select(current + 1); event.preventDefault(); }
    else if (event.key === "ArrowLeft" || event.key === "ArrowUp") { select(current - 1); event.preventDefault(); }
    else if (event.key === "c") { showContext(); }
    else if (event.key === "Escape") { document.getElementById("context").hidden = true; }
    else if (keyToLabel[event.key]) { decide(keyToLabel[event.key]); event.preventDefault(); }
  });
  select(0);
})();

// labgate console: live refresh of [data-refresh] blocks, and "select all" on the review queue.
// No framework, no build step; served by the daemon (Content-Security-Policy: script-src 'self').
"use strict";

function refreshBlock(block) {
  const every = Math.max(1, Number(block.dataset.every || 5)) * 1000;
  const tick = async () => {
    // Do not replace a form someone is typing in.
    if (!block.contains(document.activeElement) || document.activeElement === document.body) {
      try {
        const response = await fetch(block.dataset.refresh, { credentials: "same-origin" });
        if (response.redirected || response.status === 401) {
          window.location = "/login?why=expired";
          return;
        }
        if (response.ok) {
          block.innerHTML = await response.text();
          block.dataset.refreshedAt = new Date().toISOString();
        }
      } catch (error) {
        block.dataset.refreshError = String(error);
      }
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshBlock);
  const all = document.getElementById("all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input[name=result]").forEach((box) => { box.checked = all.checked; });
    });
  }
});

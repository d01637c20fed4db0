// labgate console, rule-set editor: line numbers beside the text area (the lines the check
// found wrong are marked), and "line N" in a problem puts the cursor on that line.
// The page works without it: the problems list their line and its text.
// No framework; served by the daemon (Content-Security-Policy: script-src 'self').
"use strict";

function ruleEditor() {
  const text = document.getElementById("rule-text");
  const gutter = document.getElementById("rule-gutter");
  if (!text || !gutter) {
    return;
  }
  const marked = new Set(
    Array.from(gutter.querySelectorAll(".rule-bad"), (span) => Number(span.dataset.line)),
  );

  // Rebuild the numbers when the number of lines changes; the marks stay on their numbers
  // until the next check, dimmed once the text was edited (they may have moved).
  let shown = gutter.children.length;
  const renumber = () => {
    const count = Math.max(1, text.value.split("\n").length);
    if (count !== shown) {
      const spans = [];
      for (let line = 1; line <= count; line += 1) {
        const span = document.createElement("span");
        span.dataset.line = String(line);
        span.textContent = String(line);
        if (marked.has(line)) {
          span.className = "rule-bad";
        }
        spans.push(span);
      }
      gutter.replaceChildren(...spans);
      shown = count;
    }
    gutter.scrollTop = text.scrollTop;
  };
  text.addEventListener("input", () => {
    gutter.classList.add("rule-stale");
    renumber();
  });
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });

  const goTo = (line) => {
    const lines = text.value.split("\n");
    const index = Math.min(Math.max(line, 1), lines.length) - 1;
    let start = 0;
    for (let i = 0; i < index; i += 1) {
      start += lines[i].length + 1;
    }
    text.focus();
    text.setSelectionRange(start, start + lines[index].length);
    // Put the line a few lines below the top of the visible text.
    const lineHeight = parseFloat(window.getComputedStyle(text).lineHeight) || 18;
    text.scrollTop = Math.max(0, (index - 3) * lineHeight);
    gutter.scrollTop = text.scrollTop;
  };
  document.querySelectorAll(".rule-goto").forEach((link) => {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      goTo(Number(link.dataset.line));
    });
  });
  // After a check that found problems, start on the first one.
  const first = document.querySelector(".rule-goto");
  if (first) {
    goTo(Number(first.dataset.line));
  }
}

document.addEventListener("DOMContentLoaded", ruleEditor);

() => {
  // A citation chip names the id of its highlighted span; show that span in the source pane
  // instead of following the link, since the pane scrolls on its own.
  document.addEventListener("click", (event) => {
    const chip = event.target.closest("a.cite-chip");
    if (!chip) return;
    event.preventDefault();
    const id = (chip.getAttribute("href") || "").slice(1);
    const pane = document.querySelector("#source");
    const mark = pane && pane.querySelector(`[id="${id}"]`);
    if (!mark) return;
    pane.querySelectorAll("mark.active").forEach((m) => m.classList.remove("active"));
    mark.classList.add("active");
    mark.scrollIntoView({ behavior: "smooth", block: "center" });
  }, true);

  // An answer updates the source pane in place, leaving it scrolled where it was: bring the
  // latest answer's first span into the middle of the pane (the pane alone scrolls, not the
  // page). Only a span not shown before moves it, so other updates leave a reader's scrolling be.
  let followed = null;
  new MutationObserver(() => {
    const text = document.querySelector("#source .doc-text");
    const mark = text && text.querySelector("mark.hl.current");
    if (!mark || mark === followed) return;
    followed = mark;
    const pane = text.getBoundingClientRect();
    const span = mark.getBoundingClientRect();
    text.scrollTop += span.top - pane.top - (pane.height - span.height) / 2;
  }).observe(document.body, { childList: true, subtree: true, attributes: true, attributeFilter: ["class"] });
}

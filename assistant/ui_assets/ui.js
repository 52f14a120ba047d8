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
}

// graduate review: keyboard shortcuts and label search for the review form. The form works
// without this script; the script only makes the common path fast. No dependencies.
"use strict";
(function () {
  const form = document.getElementById("review-form");
  if (!form) return;
  const search = document.getElementById("label-search");
  const list = document.getElementById("labels");
  const note = document.getElementById("note");
  const hint = document.getElementById("hint");
  const text = document.getElementById("label-text");  // a JSON answer in a text box (older pages)
  const fieldInputs = Array.from(form.querySelectorAll("input.field-input"));  // extraction: one per field
  const items = list ? Array.from(list.querySelectorAll("li")) : [];
  let active = -1;
  let submitting = false;

  const say = (message) => { hint.textContent = message; };
  const visible = () => items.filter((li) => !li.hidden);
  const radio = (li) => li.querySelector("input[type=radio]");
  const chosen = () => (fieldInputs.length ? true
    : text ? text.value.trim() : (form.querySelector("input[name=label]:checked") || {}).value);

  // Extraction: copy one model's value into every field (dataset key "frontier" or "small").
  function fill(which, what) {
    if (which === "small" && !form.dataset.small) { say("there is no " + what + " answer for this item"); return false; }
    fieldInputs.forEach((input) => { input.value = input.dataset[which] || ""; });
    say("");
    return true;
  }

  function highlight(index) {
    const shown = visible();
    items.forEach((li) => li.classList.remove("active"));
    if (!shown.length) { active = -1; return; }
    active = Math.max(0, Math.min(index, shown.length - 1));
    shown[active].classList.add("active");
    shown[active].scrollIntoView({ block: "nearest" });
  }

  function choose(label, what) {
    if (!label) { say("there is no " + what + " label for this item"); return false; }
    if (text) { text.value = label; say(""); return true; }
    const li = items.find((x) => x.dataset.label === label);
    if (!li) { say(what + " label " + JSON.stringify(label) + " is not in the label set"); return false; }
    li.hidden = false;
    radio(li).checked = true;
    li.scrollIntoView({ block: "nearest" });
    say("");
    return true;
  }

  function submitWith(verdict) {
    if (submitting) return;
    if (verdict === "label" && !chosen()) { say("choose a label first (1, 2, or / to search)"); return; }
    submitting = true;
    form.requestSubmit(form.querySelector("button[name=verdict][value=" + verdict + "]"));
  }

  function filter() {
    const q = search.value.trim().toLowerCase();
    const words = q.split(/[\s_]+/).filter(Boolean);
    items.forEach((li) => {
      const name = li.dataset.label.toLowerCase();
      li.hidden = !words.every((w) => name.includes(w));
    });
    highlight(0);
  }

  form.addEventListener("submit", () => { submitting = true; });
  if (search) {
    search.addEventListener("input", filter);
    search.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        highlight(active + (e.key === "ArrowDown" ? 1 : -1));
      } else if (e.key === "Enter") {
        e.preventDefault();
        const shown = visible();
        if (shown.length && active >= 0) radio(shown[active]).checked = true;
        submitWith("label");
      } else if (e.key === "Escape") {
        search.blur();
      }
    });
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    const target = e.target;
    if (target === search) return;
    if (target.matches("textarea, input[type=text], input[type=search], input[type=password]")) {
      if (e.key === "Escape") target.blur();
      return;
    }
    switch (e.key) {
      case "1":
        if (fieldInputs.length ? fill("frontier", "frontier") : choose(form.dataset.frontier, "frontier")) e.preventDefault();
        break;
      case "2":
        if (fieldInputs.length ? fill("small", "small model's") : choose(form.dataset.small, "small model's")) e.preventDefault();
        break;
      case "/":
        if (search) { e.preventDefault(); search.focus(); search.select(); }
        break;
      case "Enter":
        if (target.matches("button, a, summary")) return;  // their own Enter
        e.preventDefault();
        submitWith("label");
        break;
      case "s":
        e.preventDefault();
        submitWith("skip");
        break;
      case "x":
        e.preventDefault();
        submitWith("not_in_label_set");
        break;
      case "n":
        e.preventDefault();
        note.focus();
        break;
    }
  });
})();

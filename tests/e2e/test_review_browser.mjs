// The browser half of tests/e2e/test_review_browser.py: playwright-core drives the system's
// Chromium (CHROMIUM, e.g. /usr/bin/chromium; no browser is ever downloaded) through the review
// page. It signs in, labels three items (keyboard, mouse, keyboard search), looks at an item whose
// input is HTML/script, saves screenshots, and prints what it saw as one JSON line; the Python
// test seeded Kafka, started the page, and checks the topic.
import { launch, watchedPage } from "./browser.mjs";

const { REVIEW_URL, REVIEW_KEY, REVIEW_TASK, CHROMIUM, SCREENSHOT_DIR } = process.env;
const seen = { steps: [], dialogs: [], errors: [], foreign_requests: [] };

const browser = await launch(CHROMIUM);
try {
  const page = await watchedPage(browser, seen);
  page.on("request", (r) => { if (!r.url().startsWith(REVIEW_URL)) seen.foreign_requests.push(r.url()); });

  await page.goto(`${REVIEW_URL}/tasks/${REVIEW_TASK}/queue`);
  await page.fill("#key", REVIEW_KEY);
  await Promise.all([page.waitForSelector("#review-form"), page.click("section.login button[type=submit]")]);

  const current = async () => (await page.textContent("#call-id")).trim();
  const savedAs = (id) => page.waitForURL((url) => url.searchParams.get("saved") === id);

  // 1. keyboard only: "1" takes the frontier's label, Enter submits
  let id = await current();
  const frontier = await page.getAttribute("#review-form", "data-frontier");
  await page.keyboard.press("1");
  await Promise.all([savedAs(id), page.keyboard.press("Enter")]);
  seen.steps.push({ call_id: id, how: "keyboard: 1, Enter", label: frontier });

  // 2. mouse only: click a label in the list, click "Submit label"
  id = await current();
  const small = await page.getAttribute("#review-form", "data-small");
  await page.click(`#labels li[data-label="${small}"] label`);
  await Promise.all([savedAs(id), page.click("#submit-label")]);
  seen.steps.push({ call_id: id, how: "mouse: label, Submit", label: small });

  // 3. keyboard search: "/" focuses the search, typing filters the 77 labels, Enter takes the first
  id = await current();
  await page.keyboard.press("/");
  await page.keyboard.type("top up fail");
  const shown = await page.$$eval("#labels li:not([hidden])", (lis) => lis.map((li) => li.dataset.label));
  await Promise.all([savedAs(id), page.keyboard.press("Enter")]);
  seen.steps.push({ call_id: id, how: "keyboard: /, search, Enter", label: shown[0], shown });

  // 4. the next item's input is HTML with a script: it must be shown as text
  seen.next_call_id = await current();
  seen.input_text = await page.textContent("#item-input");
  seen.input_child_elements = await page.$$eval("#item-input *", (els) => els.length);
  seen.script_elements = await page.$$eval("script", (els) => els.map((e) => e.getAttribute("src")));
  seen.flash = (await page.textContent("#saved")).replace(/\s+/g, " ").trim();
  await page.screenshot({ path: `${SCREENSHOT_DIR}/review-queue.png`, fullPage: true });

  await page.goto(`${REVIEW_URL}/tasks/${REVIEW_TASK}`);
  seen.task_mode = (await page.textContent("#mode")).trim();
  seen.task_reviewed = (await page.textContent("#reviewed-count")).trim();
  await page.screenshot({ path: `${SCREENSHOT_DIR}/review-task.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));

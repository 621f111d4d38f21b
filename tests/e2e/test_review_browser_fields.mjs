// The browser half of test_review_browser.py's extraction test: playwright-core drives the system's
// Chromium through an extraction item. It signs in, reads which fields are marked as differing,
// presses "2" (every field takes the small model's value), corrects one field by typing, submits
// with Enter in that field, and prints what it saw as one JSON line.
import { launch, watchedPage } from "./browser.mjs";

const { REVIEW_URL, REVIEW_KEY, REVIEW_TASK, CHROMIUM, SCREENSHOT_DIR, FIX_FIELD, FIX_VALUE } = process.env;
const seen = { errors: [], dialogs: [] };

const browser = await launch(CHROMIUM);
try {
  const page = await watchedPage(browser, seen);

  await page.goto(`${REVIEW_URL}/tasks/${REVIEW_TASK}/queue`);
  await page.fill("#key", REVIEW_KEY);
  await Promise.all([page.waitForSelector("#review-form"), page.click("section.login button[type=submit]")]);
  const values = () => page.$$eval("input.field-input", (xs) => Object.fromEntries(xs.map((x) => [x.id.slice(6), x.value])));

  seen.call_id = (await page.textContent("#call-id")).trim();
  seen.differs = await page.$$eval("tr.field-row.differs", (rows) => rows.map((r) => r.dataset.field));
  seen.prefilled = await values();
  await page.keyboard.press("2");
  seen.after_2 = await values();
  await page.fill(`#field-${FIX_FIELD}`, FIX_VALUE);
  await page.screenshot({ path: `${SCREENSHOT_DIR}/review-fields.png`, fullPage: true });
  await Promise.all([page.waitForURL((url) => url.searchParams.get("saved") === seen.call_id),
                     page.press(`#field-${FIX_FIELD}`, "Enter")]);
  seen.flash = (await page.textContent("#saved")).replace(/\s+/g, " ").trim();
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));

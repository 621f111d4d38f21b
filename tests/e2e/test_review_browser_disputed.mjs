// The browser half of test_review_browser.py's disputed-labels test: playwright-core drives the system's
// Chromium from the task page's "train labels the model disputes" link to the first listed item, reads
// what it shows, presses "2" (the model's label) and Enter, and prints what it saw as one JSON line.
import { launch, watchedPage } from "./browser.mjs";

const { REVIEW_URL, REVIEW_KEY, REVIEW_TASK, CHROMIUM, SCREENSHOT_DIR } = process.env;
const seen = { errors: [], dialogs: [] };

const browser = await launch(CHROMIUM);
try {
  const page = await watchedPage(browser, seen);
  const text = async (selector) => (await page.textContent(selector)).replace(/\s+/g, " ").trim();

  await page.goto(`${REVIEW_URL}/tasks/${REVIEW_TASK}`);
  await page.fill("#key", REVIEW_KEY);
  await Promise.all([page.waitForSelector("#disputed a"), page.click("section.login button[type=submit]")]);
  seen.task_link = await text("#disputed a");
  await Promise.all([page.waitForSelector("#review-form"), page.click("#disputed a")]);
  seen.path = new URL(page.url()).pathname;
  seen.call_id = await text("#call-id");
  seen.trained_on = await text("#frontier-answer");
  seen.model = await text("#small-answer");
  await page.keyboard.press("2");
  seen.chosen = await page.$eval("input[name=label]:checked", (x) => x.value);
  await page.screenshot({ path: `${SCREENSHOT_DIR}/review-disputed.png`, fullPage: true });
  await Promise.all([page.waitForURL((url) => url.searchParams.get("saved") === seen.call_id),
                     page.keyboard.press("Enter")]);
  seen.flash = await text("#saved");
  seen.next_call_id = await text("#call-id");
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));

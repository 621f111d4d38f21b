// What every review-page browser test starts with: the system's Chromium (no browser is ever
// downloaded), headless, and a page that records dialogs, page errors and console errors in `seen`.
import { chromium } from "playwright-core";

export function launch(executablePath) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

export async function watchedPage(browser, seen) {
  const page = await (await browser.newContext({ viewport: { width: 1360, height: 940 } })).newPage();
  page.setDefaultTimeout(15000);
  page.on("dialog", async (d) => { seen.dialogs.push(d.message()); await d.dismiss(); });
  page.on("pageerror", (e) => seen.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") seen.errors.push(m.text()); });
  return page;
}

// What the browser scripts (dashboard.mjs, docs.mjs) share: their environment, their
// check, and Debian's chromium launched headless the same way.
import { chromium } from 'playwright-core';

/** A required environment variable. */
export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

/** How long any wait of a page may take (generous: CI runs under load). */
export const TIMEOUT = 60_000;

/** Throw `message` unless `cond`. */
export function check(cond, message) {
  if (!cond) throw new Error(message);
}

/** Headless chromium (CHROMIUM, default /usr/bin/chromium), with nothing in the background. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

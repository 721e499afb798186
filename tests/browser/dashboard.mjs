#!/usr/bin/env node
// Drives herald's live dashboard (GET /) in Debian's Chromium and checks that
// it is live and that its DLQ controls work against a running herald.
//
//   node tests/browser/dashboard.mjs --url http://127.0.0.1:PORT/ --token TOKEN --screenshot PATH
//
// The caller keeps publishing events while this runs, and has dead-lettered
// some events that a replay can deliver (a replayed permanent failure, such as
// an invalid number, is dead-lettered again and the DLQ never empties).
// Steps:
//   1. load the page (any page JS error or console error fails the run) and
//      enter the admin token;
//   2. read total-sent and wait (up to 60 s) until it has grown;
//   3. wait until dlq-count > 0 with letters listed, take the screenshot
//      (not before the page has been open --settle-secs, default 30, so its
//      charts have something to draw), click replay-all, and wait until
//      dlq-count is 0 and no letter is listed;
//   4. take a second screenshot (PATH with "-after" before the extension);
//   5. print one JSON line and exit 0. Any failed check: the reason on
//      stderr, {"ok":false,...} on stdout, exit 1.
//
// Environment: CHROMIUM (default /usr/bin/chromium).

import { chromium } from 'playwright-core';

const USAGE = 'usage: node dashboard.mjs --url http://127.0.0.1:PORT/ --token TOKEN --screenshot PATH [--timeout-secs 60] [--settle-secs 30]';

function parseArgs(argv) {
  const out = { timeoutSecs: 60, settleSecs: 30 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (a === '--url') out.url = next();
    else if (a === '--token') out.token = next();
    else if (a === '--screenshot') out.screenshot = next();
    else if (a === '--timeout-secs') out.timeoutSecs = Number(next());
    else if (a === '--settle-secs') out.settleSecs = Number(next());
    else if (a === '-h' || a === '--help') { console.log(USAGE); process.exit(0); }
    else throw new Error(`unknown argument ${a}\n${USAGE}`);
  }
  if (!out.url || !out.token || !out.screenshot) throw new Error(USAGE);
  if (!(out.timeoutSecs > 0)) throw new Error('--timeout-secs must be a positive number');
  if (!(out.settleSecs >= 0)) throw new Error('--settle-secs must be a number >= 0');
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function afterPath(p) {
  const dot = p.lastIndexOf('.');
  const slash = p.lastIndexOf('/');
  return dot > slash ? p.slice(0, dot) + '-after' + p.slice(dot) : p + '-after';
}

async function main(args) {
  const problems = []; // page errors and console errors, each one fails the run
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
    page.on('crash', () => problems.push('page crashed'));

    const check = () => { if (problems.length) throw new Error(problems.join('\n')); };
    // Polls fn() until it returns a truthy value, failing on page errors and
    // after `secs`; `what` says what was awaited, `last` what was seen.
    async function waitFor(what, secs, fn) {
      const end = Date.now() + secs * 1000;
      let last;
      for (;;) {
        check();
        const r = await fn();
        if (r && r.ok) return r;
        last = r && r.seen;
        if (Date.now() > end) throw new Error(`timed out after ${secs} s waiting for ${what}` + (last !== undefined ? ` (last seen: ${JSON.stringify(last)})` : ''));
        await sleep(500);
      }
    }
    // data-value of a data-testid element: the raw number behind its text.
    const valueOf = async (testid) => page.evaluate((id) => {
      const n = document.querySelector(`[data-testid="${id}"]`);
      if (!n || n.dataset.value === undefined || n.dataset.value === '') return null;
      const v = Number(n.dataset.value);
      return Number.isFinite(v) ? v : null;
    }, testid);
    const dlqRows = async () => page.locator('[data-testid="dlq-row"]').count();
    // Full-page screenshots from the top, so the sticky header sits where it belongs.
    const shoot = async (path) => {
      await page.evaluate(() => window.scrollTo(0, 0));
      await sleep(200);
      await page.screenshot({ path, fullPage: true });
    };

    // 1. load, first scrape, token
    const loadedAt = Date.now();
    const res = await page.goto(args.url, { waitUntil: 'domcontentloaded', timeout: 30000 });
    if (!res || !res.ok()) throw new Error(`GET ${args.url} answered ${res ? res.status() : 'nothing'}`);
    await waitFor('the first /metrics scrape (total-sent)', 30, async () => {
      const v = await valueOf('total-sent');
      return { ok: v !== null, seen: v };
    });
    await page.fill('[data-testid="token-input"]', args.token);
    await page.click('[data-testid="token-save"]');
    await waitFor('the admin API to accept the token', 30, async () => {
      const st = await page.getAttribute('[data-testid="api-status"]', 'data-state');
      const text = await page.textContent('[data-testid="api-status"]');
      if (st === 'bad') throw new Error(`the admin API refused: ${text}`);
      return { ok: st === 'ok', seen: text };
    });

    // 2. live numbers
    const sentBefore = await valueOf('total-sent');
    const grown = await waitFor(`total-sent to grow past ${sentBefore}`, args.timeoutSecs, async () => {
      const v = await valueOf('total-sent');
      return { ok: v !== null && v > sentBefore, seen: v, v };
    });
    const sentAfter = grown.v;

    // 3. dead letters listed
    const listed = await waitFor('dlq-count > 0 with letters listed', args.timeoutSecs, async () => {
      const n = await valueOf('dlq-count');
      const rows = await dlqRows();
      return { ok: n > 0 && rows > 0, seen: { dlq_count: n, rows }, n };
    });
    const dlqBefore = listed.n;
    // The most informative moment: live numbers, letters listed, and the
    // page open for --settle-secs so its charts have some history to draw.
    const settle = Math.max(3000, loadedAt + args.settleSecs * 1000 - Date.now());
    await sleep(settle);
    check();
    if (!((await valueOf('dlq-count')) > 0)) throw new Error('the dead letters went away before replay-all was clicked');
    await shoot(args.screenshot);

    const replayAll = page.locator('[data-testid="replay-all"]');
    await replayAll.waitFor({ state: 'visible', timeout: 10000 });
    if (await replayAll.isDisabled()) throw new Error('replay-all is disabled while letters are listed');
    await replayAll.click();
    const emptied = await waitFor('dlq-count to reach 0 with no letter listed', args.timeoutSecs, async () => {
      const n = await valueOf('dlq-count');
      const rows = await dlqRows();
      return { ok: n === 0 && rows === 0, seen: { dlq_count: n, rows, msg: await page.textContent('[data-testid="dlq-msg"]') }, n };
    });
    const dlqAfter = emptied.n;
    await sleep(1000);
    check();
    await shoot(afterPath(args.screenshot));
    check();

    console.log(JSON.stringify({ sent_before: sentBefore, sent_after: sentAfter, dlq_before: dlqBefore, dlq_after: dlqAfter }));
  } finally {
    await browser.close().catch(() => {});
  }
}

function fail(e) {
  const why = e && e.message ? e.message : String(e);
  console.error('FAIL: ' + why);
  console.log(JSON.stringify({ ok: false, error: why }));
  process.exit(1);
}

let args;
try { args = parseArgs(process.argv.slice(2)); } catch (e) { fail(e); }

// A hard stop, so a hung browser can never hang the caller: every wait above
// is bounded, and so is the whole run.
const limitSecs = 3 * args.timeoutSecs + args.settleSecs + 150;
setTimeout(() => fail(new Error(`the whole run took longer than ${limitSecs} s`)), limitSecs * 1000).unref();

main(args).then(
  () => process.exit(0),
  fail,
);

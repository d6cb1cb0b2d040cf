// Drives Debian's /usr/bin/chromium (headless) through the users service's /docs and the two client pages.
//
// Usage: node drive.mjs CONFIG.json  (written by test_docs_in_browser.py)
// It records what the browser saw into OUT_DIR/result.json and a screenshot per step into OUT_DIR;
// the Python test makes the assertions. Exit code 0 when every step ran to its end, 1 otherwise
// (result.json then says which step stopped and why).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { chromiumPath, usersUrl, authUrl, allowedPageUrl, refusedPageUrl, outDir } = config;
const { username, password, accessToken } = config;
const STEP_TIMEOUT_MS = config.stepTimeoutMs ?? 20_000;

// Everything Chromium would send to a non-loopback address (even a literal IP) goes to this "sink" proxy
// on 127.0.0.1 instead (Chromium always connects to loopback directly, never through a proxy). It records
// the first line of each attempt and refuses it, so nothing can leave the machine and we see what tried.
// (Chromium 156 still tries Google's update and accounts hosts now and then, whatever the flags.)
const blockedBrowserConnections = [];
const sink = net.createServer((socket) => {
  socket.on("error", () => {});
  socket.once("data", (data) => {
    blockedBrowserConnections.push(data.toString("latin1").split("\r\n")[0].replace(/\?.*? HTTP/, "?... HTTP"));
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
});
await new Promise((resolve) => sink.listen(0, "127.0.0.1", resolve));

// Chromium as root needs --no-sandbox (chromiumSandbox: false adds it). The rest keep it off the network:
// no background, component-update, sync or first-run traffic, no QUIC; every host name other than the
// loopback ones resolves to nothing, and every non-loopback connection goes to the sink above.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
  `--proxy-server=http://127.0.0.1:${sink.address().port}`,
];
const LOOPBACK_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]"]);

const result = {
  chromium: null,
  args: CHROMIUM_ARGS,
  steps: {},
  requests: [],
  failedRequests: [],
  offLoopbackRequests: [], // every page request to anything but loopback, sent or not
  blockedByCsp: [],
  blockedBrowserConnections,
  console: [],
  error: null,
};
const save = () => writeFileSync(join(outDir, "result.json"), JSON.stringify(result, null, 2));
const log = (message) => console.log(`[browser] ${message}`);

const userDataDir = mkdtempSync(join(tmpdir(), "chromium-profile-"));
let context;
let currentStep = "launch";
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    chromiumSandbox: false,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
  });
  result.chromium = context.browser()?.version() ?? null;
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.on("request", (request) => {
    const url = request.url();
    result.requests.push(`${request.method()} ${url}`);
    if (/^(https?|wss?):/.test(url) && !LOOPBACK_HOSTS.has(new URL(url).hostname)) result.offLoopbackRequests.push(url);
  });
  context.on("requestfailed", (request) => {
    const reason = request.failure()?.errorText;
    result.failedRequests.push(`${request.method()} ${request.url()}: ${reason}`);
    // Refused by the page's Content-Security-Policy: the browser never opened a connection for it.
    if (reason === "csp" || reason === "net::ERR_BLOCKED_BY_CSP") result.blockedByCsp.push(request.url());
  });

  const page = context.pages()[0] ?? (await context.newPage());
  let pageName = "docs";
  page.on("console", (message) => result.console.push(`${pageName} ${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => result.console.push(`${pageName} pageerror: ${error.message}`));
  // The response of the request that `matches`, or an error naming the browser's reason if it failed
  // (a CORS refusal shows up as net::ERR_FAILED, with the reason in the console).
  const responseOf = (matches) => {
    let onFailed;
    const failed = new Promise((_, reject) => {
      onFailed = (request) => {
        if (!matches(request)) return;
        const recent = result.console.slice(-3).join(" | ");
        const reason = request.failure()?.errorText;
        reject(new Error(`${request.method()} ${request.url()} failed: ${reason}; console: ${recent}`));
      };
      page.on("requestfailed", onFailed);
    });
    const response = page.waitForResponse((response) => matches(response.request()));
    const settled = Promise.race([response, failed]).finally(() => page.off("requestfailed", onFailed));
    settled.catch(() => {}); // handled where it is awaited; this keeps an early failure from being "unhandled"
    return settled;
  };
  const shot = async (name, options = {}) => {
    const path = join(outDir, name);
    await page.screenshot({ path, ...options });
    log(`screenshot ${path}`);
    return path;
  };

  // 1. The users service's /docs renders from the service's own assets.
  currentStep = "docs";
  log(`open ${usersUrl}/docs`);
  const docsResponse = await page.goto(`${usersUrl}/docs`, { waitUntil: "load" });
  await page.locator(".swagger-ui .information-container .title").waitFor();
  const meOperation = page.locator(".opblock-get").filter({ has: page.locator('[data-path="/users/me"]') });
  await meOperation.waitFor();
  result.steps.docs = {
    httpStatus: docsResponse.status(),
    title: (await page.locator(".swagger-ui .information-container .title").innerText()).split("\n")[0].trim(),
    operations: await page.locator(".opblock").count(),
    authorizeButton: await page.locator(".auth-wrapper button.authorize").isVisible(),
    screenshot: await shot("01-docs-rendered.png"),
  };

  // 1b. /redoc renders too, from the same service-hosted assets; then back to /docs.
  currentStep = "redoc";
  const redocResponse = await page.goto(`${usersUrl}/redoc`, { waitUntil: "load" });
  const redocTitle = page.locator("h1").filter({ hasText: "Users service" }).first();
  await redocTitle.waitFor();
  await page.getByText("/users/me").first().waitFor({ state: "attached" });
  result.steps.redoc = {
    httpStatus: redocResponse.status(),
    title: (await redocTitle.innerText()).trim(),
    screenshot: await shot("01b-redoc-rendered.png"),
  };
  await page.goto(`${usersUrl}/docs`, { waitUntil: "load" });
  await meOperation.waitFor();

  // 2. Authorize: the OAuth2 password flow, whose tokenUrl is the auth service's /token (another origin).
  currentStep = "authorize";
  await page.locator(".auth-wrapper button.authorize").click();
  const modal = page.locator(".modal-ux");
  await modal.waitFor();
  // The dialog offers both flows (password, client credentials), each with its own Authorize: use the password one.
  const passwordFlow = modal.locator(".auth-container").filter({ has: page.locator("#oauth_username") });
  await passwordFlow.locator("#oauth_username").fill(username);
  await passwordFlow.locator("#oauth_password").fill(password);
  const tokenUrlShown = (await modal.locator("code").allInnerTexts()).find((text) => text.includes("/token")) ?? null;
  const formShot = await shot("02-authorize-dialog.png");
  const isTokenRequest = (request) => request.method() === "POST" && request.url() === `${authUrl}/token`;
  const tokenResponsePromise = responseOf(isTokenRequest);
  // Swagger UI labels its buttons for screen readers: "Apply given OAuth2 credentials" is the dialog's
  // Authorize, "Remove authorization" its Logout (shown once logged in).
  await passwordFlow.getByRole("button", { name: "Apply given OAuth2 credentials" }).click();
  const tokenResponse = await tokenResponsePromise;
  // Once authorized, both flows of the one scheme show its Logout ("Remove authorization"); the password flow is first.
  const authorizedFlow = modal
    .locator(".auth-container")
    .filter({ has: page.getByRole("button", { name: "Remove authorization" }) })
    .first();
  await authorizedFlow.waitFor();
  result.steps.authorize = {
    tokenUrlShown,
    tokenRequestUrl: tokenResponse.url(),
    tokenStatus: tokenResponse.status(),
    tokenRequestHeaders: Object.keys(tokenResponse.request().headers()).sort(),
    dialogText: (await authorizedFlow.innerText()).trim(),
    screenshots: [formShot, await shot("03-authorized.png")],
  };
  await authorizedFlow.locator("button.btn-done").click();
  await modal.waitFor({ state: "detached" });
  const lockButtons = (state) => page.getByRole("button", { name: `authorization button ${state}`, exact: true });
  result.steps.authorize.lockedOperations = await lockButtons("locked").count();
  result.steps.authorize.unlockedOperations = await lockButtons("unlocked").count();

  // 3. GET /users/me through "Try it out" / "Execute": the bearer token goes along.
  currentStep = "try-it-out";
  await meOperation.locator(".opblock-summary").first().click();
  await meOperation.locator("button.try-out__btn").click();
  const meResponsePromise = responseOf((request) => request.url() === `${usersUrl}/users/me`);
  await meOperation.locator("button.execute").click();
  const meResponse = await meResponsePromise;
  const liveResponse = meOperation.locator(".live-responses-table .response").first();
  await liveResponse.waitFor();
  const statusCell = liveResponse.locator(".response-col_status");
  const bodyBlock = liveResponse.locator(".response-col_description pre").first();
  await bodyBlock.waitFor();
  const bodyText = await bodyBlock.innerText();
  await meOperation.evaluate((element) => element.scrollIntoView({ block: "start" }));
  result.steps.tryItOut = {
    requestUrl: meResponse.url(),
    sentAuthorization: (meResponse.request().headers().authorization ?? "").split(" ")[0] || null,
    statusOnPage: (await statusCell.innerText()).trim(),
    bodyOnPage: bodyText,
    usernameOnPage: (() => { try { return JSON.parse(bodyText).username; } catch { return null; } })(),
    screenshot: await shot("04-users-me-200.png"),
  };
  // The picture kept in deploy/screenshots/: the operation from its summary line down to the live 200 response, in page
  // coordinates; the curl command (it shows the bearer token) is painted over.
  const clip = await meOperation.evaluate((element) => {
    const block = element.getBoundingClientRect();
    const live = element.querySelector(".live-responses-table").getBoundingClientRect();
    const [x, y] = [block.left + window.scrollX, block.top + window.scrollY];
    return { x, y, width: block.width, height: live.bottom - block.top + 8 };
  });
  result.steps.tryItOut.readmeScreenshot = join(outDir, "docs-logged-in.png");
  await page.screenshot({
    path: result.steps.tryItOut.readmeScreenshot,
    fullPage: true,
    clip,
    mask: [meOperation.locator(".curl-command")],
    maskColor: "#41444e",
    animations: "disabled",
  });

  // 4. A page on an allowed origin logs in and shows the user, with fetch.
  currentStep = "allowed-origin";
  pageName = "allowed";
  const pageQuery = `?auth=${encodeURIComponent(authUrl)}&users=${encodeURIComponent(usersUrl)}`;
  await page.goto(allowedPageUrl + pageQuery);
  await page.locator("#username").fill(username);
  await page.locator("#password").fill(password);
  await page.locator("#login").click();
  await page.locator('#status:not([data-state="idle"]):not([data-state="busy"])').waitFor();
  result.steps.allowedOrigin = {
    origin: new URL(allowedPageUrl).origin,
    state: await page.locator("#status").getAttribute("data-state"),
    status: (await page.locator("#status").innerText()).trim(),
    result: await page.locator("#result").innerText(),
    screenshot: await shot("05-allowed-origin.png", { fullPage: true }),
  };

  // 5. The same page on a refused origin: the browser blocks the responses (login, and /users/me with
  //    a valid token, whose preflight fails).
  currentStep = "refused-origin";
  pageName = "refused";
  const consoleBefore = result.console.length;
  await page.goto(refusedPageUrl + pageQuery);
  await page.locator("#username").fill(username);
  await page.locator("#password").fill(password);
  await page.locator("#login").click();
  await page.locator('#status:not([data-state="idle"]):not([data-state="busy"])').waitFor();
  const refusedLogin = {
    state: await page.locator("#status").getAttribute("data-state"),
    status: (await page.locator("#status").innerText()).trim(),
  };
  const loginShot = await shot("06-refused-origin-login.png", { fullPage: true });
  await page.evaluate((token) => window.testHooks.useAccessToken(token), accessToken);
  await page.locator("#whoami").click();
  await page.locator('#status:not([data-state="idle"]):not([data-state="busy"])').waitFor();
  // Chromium names the reason (CORS) only in the console; wait for its line about /users/me.
  for (let waited = 0; waited < 5_000; waited += 100) {
    const said = result.console.slice(consoleBefore);
    if (said.some((line) => line.includes(`${usersUrl}/users/me`) && line.includes("CORS policy"))) break;
    await page.waitForTimeout(100);
  }
  result.steps.refusedOrigin = {
    origin: new URL(refusedPageUrl).origin,
    login: refusedLogin,
    usersMe: {
      state: await page.locator("#status").getAttribute("data-state"),
      status: (await page.locator("#status").innerText()).trim(),
    },
    corsConsoleMessages: result.console.slice(consoleBefore).filter((line) => line.includes("CORS policy")),
    screenshots: [loginShot, await shot("07-refused-origin-users-me.png", { fullPage: true })],
  };
  currentStep = "done";
} catch (error) {
  result.error = `step ${currentStep}: ${error.stack ?? error}`;
  log(result.error);
  try {
    const page = context?.pages()[0];
    if (page) await page.screenshot({ path: join(outDir, `failed-${currentStep}.png`), fullPage: true });
  } catch {
    // the failure screenshot is best effort
  }
} finally {
  result.finishedStep = currentStep;
  try {
    if (context) await context.close();
  } catch (error) {
    result.error ??= `closing the browser: ${error}`;
  }
  sink.close();
  save();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(result.error ? 1 : 0);

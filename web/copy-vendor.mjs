// Copy the browser builds of the dashboard's npm dependencies into the Python package.
//
// Run after `npm ci` (the Makefile's `web` step does both):
//   cd web && npm ci --no-audit --no-fund && node copy-vendor.mjs
// Writes src/apportion/server/static/vendor/ (git-ignored; shipped in the wheel as package data).
// Fails with a clear message when a file is missing, so a broken install never ships half a page.
import { copyFileSync, existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const target = join(here, "..", "src", "apportion", "server", "static", "vendor");

// [source inside node_modules, file name in vendor/]
const FILES = [
  ["socket.io-client/dist/socket.io.min.js", "socket.io.min.js"],
  ["socket.io-client/LICENSE", "socket.io-client.LICENSE"],
  ["uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["uplot/dist/uPlot.min.css", "uPlot.min.css"],
  ["uplot/LICENSE", "uplot.LICENSE"],
];

mkdirSync(target, { recursive: true });
let failed = false;
for (const [source, name] of FILES) {
  const from = join(modules, source);
  if (!existsSync(from)) {
    console.error(`copy-vendor: ${from} is missing; run \`npm ci\` in web/ first`);
    failed = true;
    continue;
  }
  copyFileSync(from, join(target, name));
  console.log(`copy-vendor: ${name} (${statSync(from).size} bytes)`);
}
process.exit(failed ? 1 : 0);

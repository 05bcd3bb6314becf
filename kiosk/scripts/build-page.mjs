// Bundles the kiosk page (page/main.ts + the library) into dist/page/ with esbuild.
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "dist", "page");
await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(root, "page", "main.ts")],
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outfile: join(out, "app.js"),
  sourcemap: true,
  minify: true,
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) await copyFile(join(root, "page", file), join(out, file));
console.log(`kiosk page built in ${out}`);

#!/usr/bin/env node
// Entry of the `tandem` command. `npm ci` runs no lifecycle scripts, so this builds `dist/` itself when
// it is missing or older than the sources (a checkout), then runs the CLI from `dist/`.
import { spawnSync } from "node:child_process"
import { existsSync, readdirSync, statSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const entry = join(root, "dist", "src", "shell", "main.js")

const newestSource = (dir) => {
  let newest = 0
  for (const name of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, name.name)
    newest = Math.max(newest, name.isDirectory() ? newestSource(path) : statSync(path).mtimeMs)
  }
  return newest
}

const stale = () => {
  if (!existsSync(join(root, "src"))) return false
  if (!existsSync(entry)) return true
  return newestSource(join(root, "src")) > statSync(entry).mtimeMs
}

if (stale()) {
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc")
  const built = spawnSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], {
    stdio: ["ignore", "inherit", "inherit"]
  })
  if (built.status !== 0) {
    console.error("tandem: building dist/ failed (see above)")
    process.exit(1)
  }
}

await import(entry)

/** Real `tandem` processes for end-to-end tests: `process.execPath` plus the built entry file. */
import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

export const entry = join(import.meta.dirname, "..", "..", "dist", "src", "shell", "main.js")

export const freshCacheDir = (): string => mkdtempSync(join(tmpdir(), "tandem-cache-"))

export interface Finished {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs `tandem ARGS` to completion (bounded by `timeoutMs`). */
export const runTandem = (
  args: ReadonlyArray<string>,
  env: Record<string, string> = {},
  timeoutMs = 120_000
): Promise<Finished> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [entry, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`tandem ${args.join(" ")} did not finish in ${timeoutMs} ms\n${stderr}`))
    }, timeoutMs)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })

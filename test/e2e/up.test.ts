/** `tandem up` (what `npm start` runs): ready line, URL, a curl line that works, and child lifecycle. */
import { execFile, spawn } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import { createInterface } from "node:readline"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"
import { waitFor } from "./cluster.js"
import { entry, freshCacheDir } from "./processes.js"

const childrenOf = (pid: number): Array<number> =>
  readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .flatMap((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, "utf8")
        const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1])
        return ppid === pid ? [Number(d)] : []
      } catch {
        return []
      }
    })

const alive = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")
  } catch {
    return false
  }
}

const startUp = (cache: string) => {
  const proc = spawn(process.execPath, [entry, "up", "--model", "builtin:tiny", "--port", "0"], {
    env: { ...process.env, TANDEM_CACHE_DIR: cache },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stderr = ""
  proc.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
  const lines: Array<string> = []
  createInterface({ input: proc.stdout }).on("line", (l) => lines.push(l))
  const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)))
  return { proc, lines, exited, stderr: () => stderr }
}

describe("tandem up", () => {
  it("prints its ready line, the URL and a curl line that streams an answer; its children exit when it is killed", async () => {
    const up = startUp(freshCacheDir())
    try {
      await waitFor("up's three lines", async () => (up.lines.length >= 3 ? true : undefined), 90_000)
      const ready = JSON.parse(up.lines[0]!) as { event: string; role: string; http: string }
      expect(ready).toMatchObject({ event: "ready", role: "up" })
      expect(up.lines[1]).toContain(`http://${ready.http}`)
      const curl = up.lines[2]!
      expect(curl.startsWith("curl ")).toBe(true)
      const { stdout } = await promisify(execFile)("bash", ["-c", curl], { timeout: 30_000 })
      expect(stdout).toContain("chat.completion.chunk")
      expect(stdout.trim().endsWith("data: [DONE]")).toBe(true)
      const children = childrenOf(up.proc.pid!)
      expect(children).toHaveLength(3)
      up.proc.kill("SIGKILL")
      await waitFor("every child gone", async () => (children.every((c) => !alive(c)) ? true : undefined))
    } finally {
      up.proc.kill("SIGKILL")
    }
  })

  it("stops the cluster with a non-zero exit, naming the child, when one dies", async () => {
    const up = startUp(freshCacheDir())
    try {
      await waitFor("up ready", async () => (up.lines.length >= 1 ? true : undefined), 90_000)
      const children = childrenOf(up.proc.pid!)
      expect(children).toHaveLength(3)
      const victim = children[0]!
      process.kill(victim, "SIGKILL")
      const code = await up.exited
      expect(code).not.toBe(0)
      expect(up.stderr()).toMatch(
        /tandem up: (decode|prefill|router)(-\d)? exited \(SIGKILL\); stopping the cluster/
      )
      await waitFor("every child gone", async () => (children.every((c) => !alive(c)) ? true : undefined))
    } finally {
      up.proc.kill("SIGKILL")
    }
  })
})

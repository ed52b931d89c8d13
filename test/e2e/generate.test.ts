import { readdirSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { GENERATOR_VERSION } from "../../src/gpu/ModelGenerator.js"
import { freshCacheDir, runTandem } from "./processes.js"

const args = [
  "generate",
  "--model",
  "builtin:small",
  "--prompt",
  "hello",
  "--max-tokens",
  "32",
  "--temperature",
  "0",
  "--json"
]

describe("tandem generate (real processes)", () => {
  it("concurrent first starts on an empty cache all succeed with the same output, and leave one model copy", async () => {
    const cache = freshCacheDir()
    const runs = await Promise.all([1, 2, 3].map(() => runTandem(args, { TANDEM_CACHE_DIR: cache })))
    for (const r of runs) expect(r.code, r.stderr).toBe(0)
    expect(new Set(runs.map((r) => r.stdout)).size).toBe(1)
    expect(readdirSync(cache)).toEqual([`builtin-small-g${GENERATOR_VERSION}`])
    const out = JSON.parse(runs[0]!.stdout) as {
      prompt_token_ids: Array<number>
      token_ids: Array<number>
      text: string
      finish_reason: string
    }
    expect(out.prompt_token_ids).toEqual([..."hello"].map((c) => c.charCodeAt(0) + 3))
    expect(out.token_ids).toHaveLength(32)
    expect(out.finish_reason).toBe("length")
    expect(typeof out.text).toBe("string")
    // A second run on the warm cache gives the same bytes.
    expect((await runTandem(args, { TANDEM_CACHE_DIR: cache })).stdout).toBe(runs[0]!.stdout)
  })

  it("a bad model directory fails with one line naming the file", async () => {
    const r = await runTandem(["generate", "--model", "/nonexistent-model", "--prompt", "x"], {
      TANDEM_CACHE_DIR: freshCacheDir()
    })
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain("/nonexistent-model/config.json: missing file")
  })
})

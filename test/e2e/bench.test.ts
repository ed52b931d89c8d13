/** `tandem bench` against a real `tandem serve`: the saved JSON, the table, the plot. */
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startTandem, type Proc } from "./cluster.js"
import { freshCacheDir, runTandem } from "./processes.js"

let serve: Proc
beforeAll(async () => {
  serve = await startTandem("serve", ["serve", "--model", "builtin:tiny", "--port", "0"], {
    TANDEM_CACHE_DIR: freshCacheDir()
  })
}, 120_000)
afterAll(async () => {
  await serve?.stop()
})

describe("tandem bench", () => {
  it("reports vllm-bench-serve fields, a table, and an SVG plot", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tandem-bench-"))
    const result = join(dir, "result.json")
    const plot = join(dir, "plot.svg")
    const url = `http://${serve.ready.http}`
    const r = await runTandem([
      "bench",
      "--url",
      url,
      "--num-prompts",
      "12",
      "--random-input-len",
      "40",
      "--random-output-len",
      "16",
      "--ignore-eos",
      "--request-rate",
      "50",
      "--seed",
      "3",
      "--num-warmups",
      "2",
      "--goodput",
      "ttft:60000",
      "--save-result",
      result,
      "--plot",
      plot
    ])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain("Serving Benchmark Result")
    expect(r.stdout).toContain("Median TTFT (ms):")
    const saved = JSON.parse(readFileSync(result, "utf8")) as Record<string, number | string>
    expect(saved["completed"]).toBe(12)
    expect(saved["failed"]).toBe(0)
    expect(saved["model_id"]).toBe("builtin-tiny")
    expect(saved["total_output_tokens"]).toBe(12 * 16)
    expect(saved["total_input_tokens"]).toBe(12 * 40)
    expect(saved["request_goodput"]).toBeCloseTo(saved["request_throughput"] as number)
    for (const k of [
      "request_throughput",
      "output_throughput",
      "total_token_throughput",
      "mean_ttft_ms",
      "median_ttft_ms",
      "p99_ttft_ms",
      "mean_tpot_ms",
      "mean_itl_ms",
      "p99_itl_ms",
      "mean_e2el_ms"
    ]) {
      expect(typeof saved[k], k).toBe("number")
    }
    const svg = readFileSync(plot, "utf8")
    expect(svg.startsWith("<svg")).toBe(true)
    expect(svg).toContain("TTFT")
  })

  it("several request rates give one result each and a latency-against-rate plot", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tandem-bench-"))
    const result = join(dir, "result.json")
    const plot = join(dir, "plot.svg")
    const r = await runTandem([
      "bench",
      "--url",
      `http://${serve.ready.http}`,
      "--endpoint",
      "chat",
      "--num-prompts",
      "6",
      "--random-input-len",
      "20",
      "--random-output-len",
      "8",
      "--request-rate",
      "20,40",
      "--save-result",
      result,
      "--plot",
      plot
    ])
    expect(r.code, r.stderr).toBe(0)
    const saved = JSON.parse(readFileSync(result, "utf8")) as Array<Record<string, number>>
    expect(saved.map((s) => s["request_rate"])).toEqual([20, 40])
    expect(saved.every((s) => s["completed"] === 6)).toBe(true)
    expect(readFileSync(plot, "utf8")).toContain("request rate")
  })

  it("counts failures instead of hanging when the server refuses", async () => {
    const r = await runTandem([
      "bench",
      "--url",
      `http://${serve.ready.http}`,
      "--model",
      "nope",
      "--num-prompts",
      "3",
      "--random-input-len",
      "8",
      "--random-output-len",
      "4",
      "--save-result",
      join(mkdtempSync(join(tmpdir(), "tandem-bench-")), "r.json")
    ])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/Failed requests:\s+3/)
  })
})

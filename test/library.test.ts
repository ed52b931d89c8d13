/** The policy core imported by package name, as a consumer would (resolves to the built dist/). */
import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import {
  chooseDecode,
  choosePrefill,
  DecodeAllowlist,
  decideDecodeTarget,
  routerStatsBody,
  greedySampling,
  routerStatsVerboseFrom,
  sample
} from "tandem"
import { VERSION } from "../src/shell/Version.js"

describe("tandem as a library", () => {
  it("exports the policy functions from the built package", async () => {
    const resolved = import.meta.resolve("tandem")
    expect(resolved).toContain("/dist/src/domain/index.js")
    const { allowlist } = DecodeAllowlist.fromEnv("127.0.0.1:7202")
    expect(decideDecodeTarget(allowlist, "127.0.0.1:7202")._tag).toBe("Allow")
    expect(routerStatsVerboseFrom("yes")).toBe(true)
    expect(
      routerStatsBody(
        { metrics: {} as never, prefill_hits: {}, decode_hits: {}, nodes: [] },
        { verbose: false }
      ).addresses_redacted
    ).toBe(true)
    const nodes = [{ id: "prefill-0", status: "online" as const, inFlight: 0 }]
    expect(choosePrefill(nodes, "round-robin", { prefillCursor: 0, decodeCursor: 0 }, [0, 0])._tag).toBe(
      "Chosen"
    )
    expect(chooseDecode([], "least-loaded", { prefillCursor: 0, decodeCursor: 0 }, [0, 0])._tag).toBe(
      "NoHealthyNode"
    )
    expect(sample(Float32Array.from([0, 5, 1]), greedySampling, { state: 1 }).token).toBe(1)
  })

  it("has type declarations beside the JS", () => {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
      exports: { ".": { types: string } }
      version: string
    }
    expect(readFileSync(new URL(`../${pkg.exports["."].types}`, import.meta.url), "utf8")).toContain(
      "./DecodeAllowlist.js"
    )
    expect(
      readFileSync(new URL("../dist/src/domain/DecodeAllowlist.d.ts", import.meta.url), "utf8")
    ).toContain("decideDecodeTarget")
    expect(pkg.version).toBe(VERSION)
  })
})

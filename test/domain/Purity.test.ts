/**
 * The functional core stays pure: no file in src/domain may import Node built-ins, onnxruntime,
 * @effect/platform-node, or anything from src/shell or src/gpu.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const domainDir = join(import.meta.dirname, "..", "..", "src", "domain")

const FORBIDDEN: ReadonlyArray<{ readonly pattern: RegExp; readonly what: string }> = [
  { pattern: /^node:/, what: "a Node built-in" },
  {
    pattern: /^(fs|path|net|os|crypto|zlib|child_process|http|https|stream|worker_threads|dgram|tls)(\/|$)/,
    what: "a Node built-in"
  },
  { pattern: /^onnxruntime-node/, what: "onnxruntime-node" },
  { pattern: /^@effect\/platform-node/, what: "@effect/platform-node" },
  { pattern: /(^|\/)(shell|gpu)(\/|$)/, what: "src/shell or src/gpu" }
]

/** Every module specifier a file imports or re-exports (static and dynamic). */
export const importsOf = (source: string): ReadonlyArray<string> => {
  const specs: Array<string> = []
  const re =
    /(?:import|export)\s[^'"]*?from\s*["']([^"']+)["']|import\s*\(\s*["']([^"']+)["']\s*\)|import\s+["']([^"']+)["']/g
  for (const m of source.matchAll(re)) specs.push(m[1] ?? m[2] ?? m[3] ?? "")
  return specs
}

export const violations = (
  files: ReadonlyArray<{ readonly name: string; readonly source: string }>
): ReadonlyArray<string> =>
  files.flatMap(({ name, source }) =>
    importsOf(source).flatMap((spec) =>
      FORBIDDEN.filter((f) => f.pattern.test(spec)).map((f) => `${name} imports ${spec} (${f.what})`)
    )
  )

describe("src/domain purity", () => {
  it("no domain file imports I/O, onnxruntime, platform-node, shell or gpu code", () => {
    const files = readdirSync(domainDir, { recursive: true, encoding: "utf8" })
      .filter((f) => f.endsWith(".ts"))
      .map((f) => ({ name: f, source: readFileSync(join(domainDir, f), "utf8") }))
    expect(files.length).toBeGreaterThan(5)
    expect(violations(files)).toEqual([])
  })

  it("the check itself catches each forbidden kind of import", () => {
    const bad = [
      'import { readFileSync } from "node:fs"',
      'import * as fs from "fs"',
      'import ort from "onnxruntime-node"',
      'import { NodeRuntime } from "@effect/platform-node"',
      'import { x } from "../shell/Transport.js"',
      'export { y } from "../gpu/Runtime.js"',
      'const m = await import("node:net")'
    ]
    for (const source of bad) expect(violations([{ name: "x.ts", source }]), source).toHaveLength(1)
    expect(
      violations([
        { name: "ok.ts", source: 'import { Schema } from "effect"\nimport { a } from "./Routing.js"' }
      ])
    ).toEqual([])
  })
})

/**
 * `tandem bench --plot FILE.svg`, drawn by Vega-Lite (rendered headless to SVG). One rate: the latency
 * distributions (TTFT, TPOT, ITL, E2EL) as box plots over every request. Several rates: median and p99
 * TTFT and ITL against the request rate.
 */
import * as vega from "vega"
import { compile, type TopLevelSpec } from "vega-lite"
import { tpotOf } from "../domain/BenchStats.js"
import type { BenchRun } from "./Bench.js"

export const renderPlot = async (runs: ReadonlyArray<BenchRun>): Promise<string> => {
  const spec: TopLevelSpec =
    runs.length === 1
      ? distributions(runs[0] as BenchRun)
      : {
          $schema: "https://vega.github.io/schema/vega-lite/v5.json",
          title: "Latency against request rate",
          data: {
            values: runs.flatMap((r) =>
              ["ttft", "itl"].flatMap((m) =>
                ["median", "p99"].map((stat) => ({
                  rate:
                    typeof r.summary["request_rate"] === "number" ? r.summary["request_rate"] : Number.NaN,
                  metric: `${stat} ${m.toUpperCase()}`,
                  ms: r.summary[`${stat}_${m}_ms`]
                }))
              )
            )
          },
          width: 480,
          height: 300,
          mark: { type: "line", point: true },
          encoding: {
            x: { field: "rate", type: "quantitative", title: "request rate (req/s)" },
            y: { field: "ms", type: "quantitative", title: "latency (ms)", scale: { type: "log" } },
            color: { field: "metric", type: "nominal" }
          }
        }
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: "none" })
  return view.toSVG()
}

const distributions = (run: BenchRun): TopLevelSpec => {
  const ok = run.outcomes.filter((o) => o.success)
  const values = [
    ...ok.map((o) => ({ metric: "TTFT", ms: o.ttft * 1000 })),
    ...ok.flatMap((o) => {
      const t = tpotOf(o)
      return t === undefined ? [] : [{ metric: "TPOT", ms: t * 1000 }]
    }),
    ...ok.flatMap((o) => o.itl.map((s) => ({ metric: "ITL", ms: s * 1000 }))),
    ...ok.map((o) => ({ metric: "E2EL", ms: o.e2el * 1000 }))
  ]
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v5.json",
    title: `Latency distributions: ${String(run.summary["completed"])} requests at ${String(run.summary["request_rate"])} req/s (${String(run.summary["model_id"])})`,

    data: { values },
    width: 480,
    height: 260,
    mark: { type: "boxplot", extent: "min-max" },
    encoding: {
      y: { field: "metric", type: "nominal", title: null, sort: ["TTFT", "TPOT", "ITL", "E2EL"] },
      x: { field: "ms", type: "quantitative", title: "milliseconds (log scale)", scale: { type: "log" } },
      color: { field: "metric", type: "nominal", legend: null }
    }
  }
}

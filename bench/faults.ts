/**
 * How long each fault takes to resolve: from the kill or abort until the client has its answer and every
 * gauge is back at zero. Real processes (builtin:small), medians over rounds. Goal: under 3 s each.
 *
 *   npm run bench:faults -- [--rounds 3]
 */
import { parseArgs } from "node:util"
import { freshCacheDir } from "../test/e2e/processes.js"
import { metric, post, startCluster, waitFor, type Proc } from "../test/e2e/cluster.js"

const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" } } })
const rounds = Number(values.rounds)
const cache = freshCacheDir()
const median = (xs: ReadonlyArray<number>) =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number

const zero = (procs: ReadonlyArray<Proc>) =>
  Promise.all(
    procs.map((p) =>
      waitFor(
        `${p.name} at zero`,
        async () => {
          const v = await Promise.all(
            ["tandem_node_live_sequences", "tandem_node_kv_bytes_held", "tandem_node_kv_pending_bytes"].map(
              (m) => metric(p.ready.http!, m)
            )
          )
          return v.every((x) => x === 0) ? true : undefined
        },
        60_000
      )
    )
  )

const stream = async (url: string, prompt: string, signal?: AbortSignal) => {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: 3000, ignore_eos: true, stream: true }),
    ...(signal ? { signal } : {})
  })
  const reader = (res.body as ReadableStream<Uint8Array>).getReader()
  await reader.read()
  // Wrapped: returning the promise itself from this async function would wait for the whole stream.
  return {
    end: (async () => {
      for (;;) {
        const { done } = await reader.read().catch(() => ({ done: true }))
        if (done) return
      }
    })()
  }
}

const results: Record<string, Array<number>> = {
  decode_killed_under_4_streams: [],
  prefill_killed_mid_prompt: [],
  client_aborts_10_streams: []
}

for (let r = 0; r < rounds; r++) {
  {
    const c = await startCluster({
      cache,
      model: "builtin:small",
      prefill: 1,
      decode: 2,
      routerArgs: ["--routing", "round-robin"]
    })
    const ends = await Promise.all(Array.from({ length: 8 }, (_, i) => stream(c.url, `s${i}`)))
    const t0 = performance.now()
    c.decode[0]!.kill()
    // The four streams on decode-0 (whichever they are: the router saw them in arrival order) end now.
    await new Promise<void>((resolve) => {
      let ended = 0
      for (const s of ends) void s.end.then(() => ++ended === 4 && resolve())
    })

    await zero(c.prefill)
    results["decode_killed_under_4_streams"]!.push(performance.now() - t0)
    await c.stop()
  }
  {
    const c = await startCluster({ cache, model: "builtin:small" })
    const pending = post(c.url, "/v1/completions", { prompt: "x".repeat(3500), max_tokens: 100 })
    await waitFor("prefill busy", async () =>
      (await metric(c.prefill[0]!.ready.http!, "tandem_node_live_sequences")) >= 0 &&
      (
        (await (await fetch(`${c.url}/router/stats`)).json()) as {
          nodes: Array<{ id: string; in_flight: number }>
        }
      ).nodes.find((n) => n.id === "prefill-0")?.in_flight === 1
        ? true
        : undefined
    )
    const t0 = performance.now()
    c.prefill[0]!.kill()
    await pending
    await zero(c.decode)
    results["prefill_killed_mid_prompt"]!.push(performance.now() - t0)
    await c.stop()
  }
  {
    const c = await startCluster({ cache, model: "builtin:small" })
    const aborts = Array.from({ length: 10 }, () => new AbortController())
    const ends = await Promise.all(aborts.map((a, i) => stream(c.url, `a${i}`, a.signal)))
    const t0 = performance.now()
    for (const a of aborts) a.abort()
    await Promise.all(ends.map((s) => s.end))
    await zero([...c.prefill, ...c.decode])

    results["client_aborts_10_streams"]!.push(performance.now() - t0)
    await c.stop()
  }
}

const summary = {
  rounds,
  resolve_ms_median: Object.fromEntries(Object.entries(results).map(([k, v]) => [k, Math.round(median(v))])),
  resolve_ms_all: Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v.map(Math.round)]))
}
// stdout may be a pipe (asynchronous): exit once the summary is written.
process.stdout.write(JSON.stringify(summary, null, 1) + "\n", () => process.exit(0))

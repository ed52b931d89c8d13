/** Real processes for end-to-end tests: spawn, wait for the ready line, poll state, stop by pid. */
import { spawn, type ChildProcess } from "node:child_process"
import { createInterface } from "node:readline"
import { entry } from "./processes.js"

export interface Ready {
  readonly role: string
  readonly http: string | null
  readonly serving: string | null
}

export interface Proc {
  readonly proc: ChildProcess
  readonly ready: Ready
  readonly name: string
  stderr(): string
  stop(): Promise<void>
  kill(): void
}

export const SECRET = "test-cluster-secret-0123456789abcdef"

export const startTandem = (
  name: string,
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  timeoutMs = 60_000
): Promise<Proc> =>
  new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [entry, ...args], {
      env: { ...process.env, TANDEM_CLUSTER_SECRET: SECRET, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stderr = ""
    proc.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString()
      if (process.env["TANDEM_TEST_VERBOSE"] === "1") process.stderr.write(`[${name}] ${d.toString()}`)
    })
    const timer = setTimeout(() => {
      proc.kill("SIGKILL")
      reject(new Error(`${name} was not ready within ${timeoutMs} ms\n${stderr}`))
    }, timeoutMs)
    proc.once("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`${name} exited (code ${code}) before it was ready\n${stderr}`))
    })
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      try {
        const msg = JSON.parse(line) as Ready & { event?: string }
        if (msg.event !== "ready") return
        clearTimeout(timer)
        resolve({
          proc,
          name,
          ready: msg,
          stderr: () => stderr,
          kill: () => void proc.kill("SIGKILL"),
          stop: () =>
            new Promise((r) => {
              if (proc.exitCode !== null || proc.signalCode !== null) return r()
              proc.once("exit", () => r())
              proc.kill("SIGTERM")
              setTimeout(() => proc.kill("SIGKILL"), 15_000).unref()
            })
        })
      } catch {
        // not JSON: ignore
      }
    })
  })

/** Polls `check` until it returns a value (not undefined), every 50 ms, up to a generous cap. */
export const waitFor = async <A>(
  what: string,
  check: () => Promise<A | undefined>,
  capMs = 30_000
): Promise<A> => {
  const until = Date.now() + capMs
  for (;;) {
    const v = await check().catch(() => undefined)
    if (v !== undefined) return v
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

export interface StatsNode {
  readonly id: string
  readonly status: string
  readonly in_flight: number
  readonly live_sequences: number
  readonly kv_bytes: number
  readonly address?: string
}

export const stats = async (
  url: string
): Promise<{
  nodes: Array<StatsNode>
  prefill_hits: Record<string, number>
  decode_hits: Record<string, number>
  addresses_redacted: boolean
}> => (await fetch(`${url}/router/stats`)).json() as never

export const allOnline = (url: string, count: number) =>
  waitFor(`${count} nodes online at ${url}`, async () => {
    const s = await stats(url)
    return s.nodes.length === count && s.nodes.every((n) => n.status === "online") ? s : undefined
  })

/** A Prometheus sample value (sum over label sets when `labels` is omitted). */
export const metric = async (httpAddr: string, name: string, labels?: string): Promise<number> => {
  const text = await (await fetch(`http://${httpAddr}/metrics`)).text()
  let total = 0
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    if (labels !== undefined && !(m[2] ?? "").includes(labels)) continue
    total += Number(m[3])
  }
  return total
}

export interface Cluster {
  readonly url: string
  readonly router: Proc
  readonly prefill: Array<Proc>
  readonly decode: Array<Proc>
  stop(): Promise<void>
}

export interface ClusterOptions {
  readonly prefill?: number
  readonly decode?: number
  readonly model?: string
  readonly cache: string
  readonly routerArgs?: ReadonlyArray<string>
  readonly routerEnv?: Record<string, string>
  /** Allowlist given to prefill nodes; default: the decode pool. */
  readonly allowlist?: (decodePool: string) => string
}

export const startCluster = async (o: ClusterOptions): Promise<Cluster> => {
  const model = o.model ?? "builtin:tiny"
  const env = { TANDEM_CACHE_DIR: o.cache }
  const decode = await Promise.all(
    Array.from({ length: o.decode ?? 1 }, (_, i) =>
      startTandem(
        `decode-${i}`,
        [
          "decode",
          "--model",
          model,
          "--serving-bind",
          "127.0.0.1:0",
          "--port",
          "0",
          "--node-id",
          `decode-${i}`
        ],
        env
      )
    )
  )
  const pool = decode.map((d) => d.ready.serving).join(",")
  const prefill = await Promise.all(
    Array.from({ length: o.prefill ?? 1 }, (_, i) =>
      startTandem(
        `prefill-${i}`,
        [
          "prefill",
          "--model",
          model,
          "--serving-bind",
          "127.0.0.1:0",
          "--port",
          "0",
          "--node-id",
          `prefill-${i}`,
          "--decode-peers",
          pool
        ],
        {
          ...env,
          TANDEM_DECODE_ALLOWLIST: o.allowlist?.(pool) ?? pool
        }
      )
    )
  )
  const router = await startTandem(
    "router",
    [
      "router",
      "--model",
      model,
      "--port",
      "0",
      "--prefill-peers",
      prefill.map((p) => p.ready.serving).join(","),
      "--decode-peers",
      pool,
      "--health-interval",
      "200ms",
      ...(o.routerArgs ?? [])
    ],
    { ...env, ...(o.routerEnv ?? {}) }
  )
  const url = `http://${router.ready.http}`
  await allOnline(url, prefill.length + decode.length)
  return {
    url,
    router,
    prefill,
    decode,
    stop: async () => {
      await Promise.all([router, ...prefill, ...decode].map((p) => p.stop()))
    }
  }
}

export const post = async (
  url: string,
  path: string,
  body: unknown,
  headers: Record<string, string> = {}
) => {
  const res = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body)
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers }
}

/** A streamed completion: the concatenated text, the finish reason, the usage chunk and every event. */
export const postStream = async (url: string, path: string, body: unknown) => {
  const res = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...(body as object), stream: true })
  })
  const text = await res.text()
  const events = text
    .split("\n\n")
    .map((e) => e.trim())
    .filter((e) => e.startsWith("data: "))
    .map((e) => e.slice(6))
  let content = ""
  let finish: string | null = null
  let usage: unknown
  for (const e of events) {
    if (e === "[DONE]") continue
    const chunk = JSON.parse(e) as {
      choices: Array<{ delta?: { content?: string }; text?: string; finish_reason: string | null }>
      usage?: unknown
    }
    if (chunk.usage !== undefined) usage = chunk.usage
    for (const c of chunk.choices) {
      content += c.delta?.content ?? c.text ?? ""
      if (c.finish_reason !== null) finish = c.finish_reason
    }
  }
  return { status: res.status, content, finish, usage, events, done: events.at(-1) === "[DONE]" }
}

/**
 * `tandem up`: a local cluster (router + `--prefill` prefill nodes + `--decode` decode nodes) as child
 * processes, with a fresh cluster secret in a 0600 file, free internal ports, and
 * `TANDEM_DECODE_ALLOWLIST` on each prefill node set to its decode pool. Prints its ready line, the URL
 * and a `curl` line once every node is online. Children exit when it exits; if one dies, it stops the
 * rest, names it, and exits non-zero.
 */
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { spawn, type ChildProcess } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { resolveModelDir } from "../../gpu/ModelStore.js"
import { Flags, logLevel } from "../Flags.js"
import type { LogLevel } from "../Log.js"
import { apiKeysFrom } from "../Processes.js"

interface Child {
  readonly name: string
  readonly proc: ChildProcess
  readonly ready: Promise<{ http: string | null; serving: string | null }>
}

const entry = process.argv[1] ?? ""

/** A child killed by a signal has `exitCode` null and `signalCode` set. */
const hasExited = (c: Child): boolean => c.proc.exitCode !== null || c.proc.signalCode !== null

const spawnChild = (
  name: string,
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  onExit: (name: string, code: number | null, signal: string | null) => void
): Child => {
  const proc = spawn(process.execPath, [entry, ...args], {
    env: { ...process.env, ...env, TANDEM_EXIT_WITH_PARENT: "1" },
    // stdin is a pipe the child watches: when this process dies, the pipe closes and the child exits.
    stdio: ["pipe", "pipe", "pipe"]
  })
  const ready = new Promise<{ http: string | null; serving: string | null }>((resolve, reject) => {
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      try {
        const msg = JSON.parse(line) as { event?: string; http?: string | null; serving?: string | null }
        if (msg.event === "ready") return resolve({ http: msg.http ?? null, serving: msg.serving ?? null })
      } catch {
        // not a ready line
      }
      process.stderr.write(`[${name}] ${line}\n`)
    })
    proc.once("exit", (code) => reject(new Error(`${name} exited (code ${code}) before it was ready`)))
  })
  ready.catch(() => {})
  createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on("line", (line) =>
    process.stderr.write(`[${name}] ${line}\n`)
  )
  proc.once("exit", (code, signal) => onExit(name, code, signal))
  return { name, proc, ready }
}

interface UpOptions {
  readonly prefill: number
  readonly decode: number
  readonly passthrough: ReadonlyArray<string>
  readonly routerArgs: ReadonlyArray<string>
  readonly decodeArgs: ReadonlyArray<string>
  readonly model: string
  readonly apiKey: string | undefined
}

const runUp = async (o: UpOptions): Promise<void> => {
  const dir = mkdtempSync(join(tmpdir(), "tandem-up-"))
  const secretFile = join(dir, "cluster-secret")
  writeFileSync(secretFile, randomBytes(32).toString("hex"), { mode: 0o600 })
  resolveModelDir(o.model) // generate a built-in model once, before the children start
  const children: Array<Child> = []
  let stopping = false
  const stopAll = (code: number) => {
    if (stopping) return
    stopping = true
    for (const c of children) if (!hasExited(c)) c.proc.kill("SIGTERM")
    const force = setTimeout(() => {
      for (const c of children) if (!hasExited(c)) c.proc.kill("SIGKILL")
    }, 12_000)
    void Promise.all(
      children.map((c) => (hasExited(c) ? Promise.resolve() : new Promise((r) => c.proc.once("exit", r))))
    ).then(() => {
      clearTimeout(force)
      rmSync(dir, { recursive: true, force: true })
      process.exit(code)
    })
  }
  const onExit = (name: string, code: number | null, signal: string | null) => {
    if (stopping) return
    process.stderr.write(`tandem up: ${name} exited (${signal ?? `code ${code}`}); stopping the cluster\n`)
    stopAll(1)
  }
  process.once("SIGINT", () => stopAll(0))
  process.once("SIGTERM", () => stopAll(0))
  const common = ["--model", o.model, "--cluster-secret-file", secretFile, ...o.passthrough]
  const decodes = Array.from({ length: o.decode }, (_, i) =>
    spawnChild(
      `decode-${i}`,
      ["decode", "--serving-bind", "127.0.0.1:0", "--node-id", `decode-${i}`, ...common, ...o.decodeArgs],
      {},
      onExit
    )
  )
  children.push(...decodes)
  const decodeAddrs = (await Promise.all(decodes.map((d) => d.ready))).map((r) => r.serving ?? "")
  const pool = decodeAddrs.join(",")
  const prefills = Array.from({ length: o.prefill }, (_, i) =>
    spawnChild(
      `prefill-${i}`,
      [
        "prefill",
        "--serving-bind",
        "127.0.0.1:0",
        "--node-id",
        `prefill-${i}`,
        "--decode-peers",
        pool,
        ...common
      ],
      { TANDEM_DECODE_ALLOWLIST: pool },
      onExit
    )
  )
  children.push(...prefills)
  const prefillAddrs = (await Promise.all(prefills.map((p) => p.ready))).map((r) => r.serving ?? "")
  const router = spawnChild(
    "router",
    [
      "router",
      "--model",
      o.model,
      "--cluster-secret-file",
      secretFile,
      "--prefill-peers",
      prefillAddrs.join(","),
      "--decode-peers",
      pool,
      ...o.routerArgs
    ],
    {},
    onExit
  )
  children.push(router)
  const { http } = await router.ready
  const url = `http://${http ?? "127.0.0.1:8080"}`
  const auth: Record<string, string> = o.apiKey === undefined ? {} : { authorization: `Bearer ${o.apiKey}` }
  for (;;) {
    if (stopping) return
    const allOnline = await fetch(`${url}/router/stats`, { headers: auth })
      .then((r) => r.json() as Promise<{ nodes: Array<{ status: string }> }>)
      .then((b) => b.nodes.length === o.prefill + o.decode && b.nodes.every((n) => n.status === "online"))
      .catch(() => false)
    if (allOnline) break
    await new Promise((r) => setTimeout(r, 100))
  }
  process.stdout.write(JSON.stringify({ event: "ready", role: "up", http, serving: null }) + "\n")
  process.stdout.write(`Tandem is up: ${url} (router, ${o.prefill} prefill, ${o.decode} decode)\n`)
  const keyHeader = o.apiKey === undefined ? "" : ` -H 'Authorization: Bearer ${o.apiKey}'`
  process.stdout.write(
    `curl -sN ${url}/v1/chat/completions -H 'Content-Type: application/json'${keyHeader} -d '{"messages":[{"role":"user","content":"Hello!"}],"max_tokens":32,"stream":true}'\n`
  )
  await new Promise(() => {})
}

export const upCommand = Command.make(
  "up",
  {
    prefill: Flag.Int("prefill").pipe(Flag.withDescription("Prefill nodes (default 1)"), Flag.withDefault(1)),
    decode: Flag.Int("decode").pipe(Flag.withDescription("Decode nodes (default 1)"), Flag.withDefault(1)),
    model: Flags.model,
    threads: Flags.threads,
    device: Flags.device,
    maxBatch: Flags.maxBatch,
    kvBudgetMb: Flags.kvBudgetMb,
    kvLease: Flags.kvLease,
    host: Flags.host,
    port: Flags.port(8080),
    routing: Flags.routing,
    servedModelName: Flags.servedModelName,
    apiKey: Flags.apiKey,
    maxConcurrency: Flags.maxConcurrency,
    maxQueue: Flags.maxQueue,
    queueTimeout: Flags.queueTimeout,
    requestTimeout: Flags.requestTimeout,
    healthInterval: Flags.healthInterval,
    maxBody: Flags.maxBody
  },
  (f) =>
    Effect.gen(function* () {
      const level: LogLevel = yield* logLevel
      const keys = apiKeysFrom(f.apiKey)
      const passthrough = [
        "--threads",
        String(f.threads),
        "--device",
        f.device,
        "--max-batch",
        String(f.maxBatch),
        ...Option.match(f.kvBudgetMb, { onNone: () => [], onSome: (mb) => ["--kv-budget-mb", String(mb)] }),
        "--log-level",
        level
      ]
      const routerArgs = [
        "--host",
        f.host,
        "--port",
        String(Option.getOrElse(f.port, () => 8080)),
        "--routing",
        f.routing,
        ...Option.match(f.servedModelName, { onNone: () => [], onSome: (n) => ["--served-model-name", n] }),
        ...f.apiKey.flatMap((k) => ["--api-key", k]),
        "--max-concurrency",
        String(f.maxConcurrency),
        "--max-queue",
        String(f.maxQueue),
        // Parsed here (a bad value fails `up` itself), passed on in canonical units.
        "--queue-timeout",
        `${f.queueTimeout}ms`,
        "--request-timeout",
        `${f.requestTimeout}ms`,
        "--health-interval",
        `${f.healthInterval}ms`,
        "--max-body",
        String(f.maxBody),
        "--log-level",
        level
      ]
      yield* Effect.tryPromise({
        try: () =>
          runUp({
            prefill: f.prefill,
            decode: f.decode,
            passthrough,
            routerArgs,
            decodeArgs: ["--kv-lease", `${f.kvLease}ms`],
            model: f.model,
            apiKey: keys[0]
          }),
        catch: (e) => (e instanceof Error ? e : new Error(String(e)))
      })
    })
).pipe(Command.withDescription("A local cluster: router + prefill + decode child processes on this machine"))

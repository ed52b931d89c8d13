/**
 * The receiving end of the KV throughput benchmark, in its own process. `framed`: Tandem's transport
 * (authenticated connection, codec, KvAssembly bounds/overlap checks, copy into tensors, sha256 at the
 * end, KvAck), without decode admission. `raw`: a plain socket that counts bytes and acks at the end.
 * Prints {"port":N} once listening.
 */
import net from "node:net"
import { acceptKvChunk, isKvComplete, startKvAssembly, type KvAssembly } from "../src/domain/KvHandoff.js"
import { InOrderKvChecksum } from "../src/shell/KvChecksum.js"
import { listen } from "../src/shell/Listener.js"
import { makeLogger } from "../src/shell/Log.js"

const mode = process.argv[2] ?? "framed"
const secret = Buffer.from(process.env["TANDEM_CLUSTER_SECRET"] ?? "bench-secret-0123456789abcdef")

if (mode === "raw") {
  const server = net.createServer((s) => {
    let expected = -1
    let got = 0
    let head = Buffer.alloc(0)
    s.on("data", (d: Buffer) => {
      if (expected < 0) {
        head = Buffer.concat([head, d])
        if (head.length < 8) return
        expected = Number(head.readBigUInt64BE(0))
        got = head.length - 8
      } else got += d.length
      if (got >= expected) {
        s.write(Buffer.from([1]))
        expected = -1
        got = 0
        head = Buffer.alloc(0)
      }
    })
  })
  server.listen(0, "127.0.0.1", () =>
    process.stdout.write(JSON.stringify({ port: (server.address() as net.AddressInfo).port }) + "\n")
  )
} else {
  const self = {
    role: "decode" as const,
    nodeId: "kv-receiver",
    modelFingerprint: "",
    tokenizerFingerprint: ""
  }
  const state = new Map<
    string,
    { assembly: KvAssembly; tensors: Array<Uint8Array>; checksum: InOrderKvChecksum }
  >()
  const l = await listen(
    "127.0.0.1",
    0,
    { secret, self, peerRoles: ["prefill"], expectModel: () => undefined },
    makeLogger({ role: "kv-receiver" }, "warn"),
    (conn) => {
      conn.on({
        frame: (f) => {
          if (f._tag === "KvBegin") {
            const assembly = startKvAssembly(f.descriptor)
            state.set(f.id, {
              assembly,
              tensors: Array.from({ length: 2 * f.descriptor.layers }, () =>
                Buffer.allocUnsafe(assembly.tensorBytes)
              ),
              checksum: new InOrderKvChecksum(assembly.tensorBytes)
            })
            void conn.send({ _tag: "KvGrant", id: f.id })
          } else if (f._tag === "KvChunk") {
            const s = state.get(f.id)
            if (s === undefined) return
            const r = acceptKvChunk(s.assembly, {
              layer: f.layer,
              kind: f.kind,
              offset: f.offset,
              length: f.bytes.byteLength
            })
            if (r._tag === "Rejected") throw new Error(r.reason)
            s.assembly = r.assembly
            ;(s.tensors[r.tensor] as Uint8Array).set(f.bytes, f.offset)
            s.checksum.add(r.tensor, f.offset, f.bytes)
          } else if (f._tag === "KvEnd") {
            const s = state.get(f.id)
            if (s === undefined || !isKvComplete(s.assembly)) return
            const sum = s.checksum.result(s.tensors)
            state.delete(f.id)
            void conn.send(
              sum === f.checksum
                ? { _tag: "KvAck", id: f.id }
                : { _tag: "Error", id: f.id, code: "kv_checksum_mismatch", message: "checksum" }
            )
          }
        }
      })
    }
  )
  process.stdout.write(JSON.stringify({ port: l.port }) + "\n")
}

/** Prometheus metrics of a role node (prefill, decode, serve), with vLLM-style names under `tandem_`. */
import { Counter, Gauge, Histogram, Registry } from "prom-client"

export class NodeMetrics {
  readonly registry = new Registry()
  readonly liveSequences = new Gauge({
    name: "tandem_node_live_sequences",
    help: "Sequences whose KV this node holds",
    registers: [this.registry]
  })
  readonly kvBytesHeld = new Gauge({
    name: "tandem_node_kv_bytes_held",
    help: "KV bytes held by live sequences",
    registers: [this.registry]
  })
  readonly decodeBufferBytes = new Gauge({
    name: "tandem_node_decode_buffer_bytes",
    help: "Bytes of the decode batch's KV buffers (rows x longest row); not counted in the KV budget",
    registers: [this.registry]
  })
  readonly kvPendingBytes = new Gauge({
    name: "tandem_node_kv_pending_bytes",
    help: "KV bytes of handoffs still arriving",
    registers: [this.registry]
  })
  readonly partialFrames = new Gauge({
    name: "tandem_node_partial_frames",
    help: "Connections with a partly received frame",
    registers: [this.registry]
  })
  readonly kvBytesReceived = new Counter({
    name: "tandem_node_kv_bytes_received_total",
    help: "KV bytes received in handoffs",
    registers: [this.registry]
  })
  readonly kvBytesSent = new Counter({
    name: "tandem_node_kv_bytes_sent_total",
    help: "KV bytes sent in handoffs",
    registers: [this.registry]
  })
  readonly handoffs = new Counter({
    name: "tandem_node_handoffs_total",
    help: "KV handoffs by outcome",
    labelNames: ["outcome"],
    registers: [this.registry]
  })
  readonly kvTransferSeconds = new Histogram({
    name: "tandem_kv_transfer_seconds",
    help: "KvBegin to KvEnd of a handoff, on the receiving node",
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry]
  })
  readonly kvTransferBytes = new Histogram({
    name: "tandem_kv_transfer_bytes",
    help: "Bytes of one KV handoff",
    buckets: [1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28],
    registers: [this.registry]
  })
}

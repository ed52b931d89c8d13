/** Prometheus metrics of the HTTP front (router, serve), named after vLLM's with a `tandem_` prefix. */
import { Counter, Gauge, Histogram, Registry } from "prom-client"

const latencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

export class HttpMetrics {
  readonly registry = new Registry()
  readonly ttft = new Histogram({
    name: "tandem_time_to_first_token_seconds",
    help: "Request arrival to first token",
    buckets: latencyBuckets,
    registers: [this.registry]
  })
  readonly itl = new Histogram({
    name: "tandem_inter_token_latency_seconds",
    help: "Gap between consecutive tokens",
    buckets: latencyBuckets,
    registers: [this.registry]
  })
  readonly e2e = new Histogram({
    name: "tandem_e2e_request_latency_seconds",
    help: "Request arrival to last token",
    buckets: latencyBuckets,
    registers: [this.registry]
  })
  readonly queueTime = new Histogram({
    name: "tandem_request_queue_time_seconds",
    help: "Time waiting for admission",
    buckets: latencyBuckets,
    registers: [this.registry]
  })
  readonly requests = new Counter({
    name: "tandem_requests_total",
    help: "Finished requests by outcome",
    labelNames: ["outcome"],
    registers: [this.registry]
  })
  readonly running = new Gauge({
    name: "tandem_num_requests_running",
    help: "Requests dispatched and not finished",
    registers: [this.registry]
  })
  readonly waiting = new Gauge({
    name: "tandem_num_requests_waiting",
    help: "Requests waiting for admission",
    registers: [this.registry]
  })
}

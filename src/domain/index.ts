/**
 * Tandem's policy core as a library: every decision the serving processes make, as pure functions over
 * plain data. No I/O, no Node built-ins, no onnxruntime.
 */
export * from "./DecodeAllowlist.js"
export * from "./Env.js"
export * from "./Handshake.js"
export * from "./Health.js"
export * from "./KvHandoff.js"
export * from "./NaturalOrder.js"
export * from "./OpenAiRequest.js"
export * from "./OpenAiResponse.js"
export * from "./RouterStats.js"
export * from "./Routing.js"
export * from "./Sampling.js"
export * from "./SocketAddress.js"
export * from "./Units.js"
export * from "./WireCodec.js"
export * from "./WireFrames.js"
export * from "./Generation.js"
export * from "./StopStrings.js"
export * from "./Scheduler.js"
export * from "./Admission.js"
export * from "./Failover.js"

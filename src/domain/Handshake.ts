/**
 * The mutual handshake of the node transport. Each side sends `Hello` with a fresh random nonce, then
 * `Auth` with an HMAC-SHA256 (computed by the shell) over `handshakeTranscript`: both nonces, both
 * identities and a direction label, so the secret never crosses the wire and a MAC cannot be reflected
 * back to the side that made it. The checks on the peer's Hello are pure and live here.
 */
import type { FrameOf, NodeRole } from "./WireFrames.js"
import { PROTOCOL_VERSION } from "./WireFrames.js"

export type HandshakeSide = "dialer" | "listener"

export type Hello = Omit<FrameOf<"Hello">, "_tag">

/** The bytes (as text) that `side` MACs to prove it knows the secret. */
export const handshakeTranscript = (side: HandshakeSide, dialer: Hello, listener: Hello): string =>
  [
    "tandem-handshake-v1",
    side === "dialer" ? "dialer->listener" : "listener->dialer",
    dialer.nonce,
    listener.nonce,
    `${dialer.role}/${dialer.nodeId}`,
    `${listener.role}/${listener.nodeId}`,
    dialer.modelFingerprint,
    listener.modelFingerprint,
    dialer.tokenizerFingerprint,
    listener.tokenizerFingerprint
  ].join("\n")

export type PeerCheck = { readonly _tag: "Accept" } | { readonly _tag: "Refuse"; readonly reason: string }

/**
 * Checks the peer's Hello. `expectedModel` is the model fingerprint the peer must have (undefined: any,
 * e.g. the router before it admitted its first node); the tokenizer fingerprint must always match.
 */
export const checkPeerHello = (
  peer: Hello,
  expect: {
    readonly roles: ReadonlyArray<NodeRole>
    readonly tokenizerFingerprint: string
    readonly modelFingerprint: string | undefined
  }
): PeerCheck => {
  if (peer.protocolVersion !== PROTOCOL_VERSION) {
    return {
      _tag: "Refuse",
      reason: `peer speaks protocol ${peer.protocolVersion}, this node ${PROTOCOL_VERSION}`
    }
  }
  if (!expect.roles.includes(peer.role)) {
    return {
      _tag: "Refuse",
      reason: `peer role ${peer.role} is not accepted here (want ${expect.roles.join(" or ")})`
    }
  }
  if (peer.nonce.length < 32) return { _tag: "Refuse", reason: "peer nonce is too short" }
  if (peer.tokenizerFingerprint !== expect.tokenizerFingerprint) {
    return { _tag: "Refuse", reason: "peer's tokenizer fingerprint differs from this node's" }
  }
  if (expect.modelFingerprint !== undefined && peer.modelFingerprint !== expect.modelFingerprint) {
    return { _tag: "Refuse", reason: "peer's model fingerprint differs from this node's" }
  }
  return { _tag: "Accept" }
}

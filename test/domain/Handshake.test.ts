import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { checkPeerHello, handshakeTranscript, type Hello } from "../../src/domain/Handshake.js"
import { PROTOCOL_VERSION } from "../../src/domain/WireFrames.js"

const hello = (over: Partial<Hello> = {}): Hello => ({
  nonce: "a".repeat(64),
  role: "prefill",
  nodeId: "prefill-0",
  protocolVersion: PROTOCOL_VERSION,
  modelFingerprint: "m1",
  tokenizerFingerprint: "t1",
  ...over
})

describe("Handshake", () => {
  it("property: the two directions MAC different transcripts (no reflection)", () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[0-9a-f]{64}$/), fc.stringMatching(/^[0-9a-f]{64}$/), (n1, n2) => {
        const d = hello({ nonce: n1, role: "router", nodeId: "router" })
        const l = hello({ nonce: n2 })
        expect(handshakeTranscript("dialer", d, l)).not.toBe(handshakeTranscript("listener", d, l))
        // Swapping the roles of the two hellos also changes the transcript.
        expect(handshakeTranscript("dialer", d, l)).not.toBe(handshakeTranscript("listener", l, d))
      })
    )
  })

  it("refuses another protocol version, an unexpected role, a short nonce and fingerprint mismatches", () => {
    const expect_ = { roles: ["prefill" as const], tokenizerFingerprint: "t1", modelFingerprint: "m1" }
    expect(checkPeerHello(hello(), expect_)._tag).toBe("Accept")
    expect(checkPeerHello(hello({ protocolVersion: 9 }), expect_)._tag).toBe("Refuse")
    expect(checkPeerHello(hello({ role: "decode" }), expect_)._tag).toBe("Refuse")
    expect(checkPeerHello(hello({ nonce: "ab" }), expect_)._tag).toBe("Refuse")
    expect(checkPeerHello(hello({ tokenizerFingerprint: "t2" }), expect_)._tag).toBe("Refuse")
    expect(checkPeerHello(hello({ modelFingerprint: "m2" }), expect_)._tag).toBe("Refuse")
    expect(
      checkPeerHello(hello({ modelFingerprint: "m2" }), { ...expect_, modelFingerprint: undefined })._tag
    ).toBe("Accept")
  })
})

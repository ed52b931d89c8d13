import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { DecodeAllowlist, decideDecodeTarget } from "../../src/domain/DecodeAllowlist.js"
import { envSetting } from "../../src/domain/Env.js"
import { formatSocketAddress } from "../../src/domain/SocketAddress.js"
import { ipv6Spellings, socketAddress } from "./arbitraries.js"

describe("DecodeAllowlist", () => {
  it("allows listed targets, rejects others with a reason naming the target", () => {
    const { allowlist, warnings } = DecodeAllowlist.fromEnv(" 10.0.0.5:7202 , [::1]:7202,, ")
    expect(warnings).toEqual([])
    expect(decideDecodeTarget(allowlist, "10.0.0.5:7202")._tag).toBe("Allow")
    expect(decideDecodeTarget(allowlist, "[0:0:0:0:0:0:0:1]:7202")._tag).toBe("Allow")
    const rejected = decideDecodeTarget(allowlist, "10.0.0.6:7202")
    expect(rejected._tag).toBe("Reject")
    if (rejected._tag === "Reject") {
      expect(rejected.target).toBe("10.0.0.6:7202")
      expect(rejected.reason).toContain("10.0.0.6:7202")
      expect(rejected.reason).toContain("KV handoff rejected")
    }
  })

  it("skips hostnames, port 0 and zone ids with a warning naming each entry", () => {
    const { allowlist, warnings } = DecodeAllowlist.fromEnv(
      "decode-1:7202,10.0.0.5:0,[fe80::1%eth0]:7202,10.0.0.5:7202"
    )
    expect(allowlist.entries).toEqual(["10.0.0.5:7202"])
    expect(warnings).toHaveLength(3)
    expect(warnings[0]).toContain("decode-1:7202")
    expect(warnings[1]).toContain("10.0.0.5:0")
    expect(warnings[2]).toContain("[fe80::1%eth0]:7202")
  })

  it("is permissive (AllowUnchecked) when nothing valid is listed", () => {
    for (const env of [undefined, "", " , ", "localhost:1"]) {
      const { allowlist } = DecodeAllowlist.fromEnv(env)
      expect(decideDecodeTarget(allowlist, "203.0.113.9:1")._tag).toBe("AllowUnchecked")
      expect(decideDecodeTarget(allowlist, "not an address")._tag).toBe("AllowUnchecked")
    }
  })

  it("an IPv4-mapped IPv6 address is not the IPv4 address", () => {
    const { allowlist } = DecodeAllowlist.fromEnv("10.0.0.1:80")
    expect(decideDecodeTarget(allowlist, "[::ffff:10.0.0.1]:80")._tag).toBe("Reject")
  })

  it("rejects an unparseable target when a list is configured", () => {
    const { allowlist } = DecodeAllowlist.fromEnv("10.0.0.1:80")
    const d = decideDecodeTarget(allowlist, "evil.example.com:80")
    expect(d._tag).toBe("Reject")
    if (d._tag === "Reject") expect(d.reason).toContain("evil.example.com:80")
  })

  it("TANDEM_ wins over MLXCEL_", () => {
    expect(
      envSetting({ TANDEM_DECODE_ALLOWLIST: "a", MLXCEL_DECODE_ALLOWLIST: "b" }, "DECODE_ALLOWLIST")
    ).toBe("a")
    expect(envSetting({ MLXCEL_DECODE_ALLOWLIST: "b" }, "DECODE_ALLOWLIST")).toBe("b")
  })

  it("property: every spelling of a listed address is allowed", () => {
    fc.assert(
      fc.property(fc.array(socketAddress, { minLength: 1, maxLength: 6 }), fc.nat(), (listed, pick) => {
        const { allowlist } = DecodeAllowlist.fromEnv(listed.map(formatSocketAddress).join(","))
        const target = listed[pick % listed.length]!
        const spellings =
          target.family === 6
            ? ipv6Spellings(target)
            : [formatSocketAddress(target), ` ${formatSocketAddress(target)}`]
        for (const s of spellings) expect(decideDecodeTarget(allowlist, s)._tag).toBe("Allow")
      })
    )
  })

  it("property: an address not listed is rejected when the list is non-empty", () => {
    fc.assert(
      fc.property(fc.array(socketAddress, { minLength: 1, maxLength: 6 }), socketAddress, (listed, other) => {
        const { allowlist } = DecodeAllowlist.fromEnv(listed.map(formatSocketAddress).join(","))
        fc.pre(!allowlist.entries.includes(formatSocketAddress(other)))
        expect(decideDecodeTarget(allowlist, formatSocketAddress(other))._tag).toBe("Reject")
      })
    )
  })

  it("property: parsing and deciding never throw on any string", () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), (env, target) => {
        const { allowlist } = DecodeAllowlist.fromEnv(env)
        decideDecodeTarget(allowlist, target)
      }),
      { numRuns: 1000 }
    )
  })
})

import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  canonicalSocketAddress,
  formatSocketAddress,
  parseSocketAddress
} from "../../src/domain/SocketAddress.js"
import { ipv6Spellings, socketAddress } from "./arbitraries.js"

describe("SocketAddress", () => {
  it("parses IPv4 and IPv6 and prints them canonically", () => {
    expect(canonicalSocketAddress("127.0.0.1:7202")).toBe("127.0.0.1:7202")
    expect(canonicalSocketAddress("[::1]:7202")).toBe("[::1]:7202")
    expect(canonicalSocketAddress("[0:0:0:0:0:0:0:1]:7202")).toBe("[::1]:7202")
    expect(canonicalSocketAddress("[2001:DB8:0:0:1:0:0:1]:80")).toBe("[2001:db8::1:0:0:1]:80")
    expect(canonicalSocketAddress("[::ffff:10.0.0.1]:80")).toBe("[::ffff:10.0.0.1]:80")
    expect(canonicalSocketAddress("[::ffff:a00:1]:80")).toBe("[::ffff:10.0.0.1]:80")
  })

  it("refuses hostnames, port 0, zone ids, leading-zero octets and junk", () => {
    for (const bad of [
      "localhost:80",
      "1.2.3.4:0",
      "[fe80::1%eth0]:80",
      "01.2.3.4:80",
      "1.2.3.4",
      "1.2.3.4:65536",
      "[::1]80",
      "",
      "::1:80",
      "1.2.3.4.5:80",
      "[1::2::3]:80"
    ]) {
      expect(parseSocketAddress(bad).ok, bad).toBe(false)
    }
    expect(parseSocketAddress("0.0.0.0:0", { allowPortZero: true }).ok).toBe(true)
  })

  it("property: format then parse round-trips, and the canonical form is a fixed point", () => {
    fc.assert(
      fc.property(socketAddress, (a) => {
        const text = formatSocketAddress(a)
        const back = parseSocketAddress(text)
        expect(back.ok).toBe(true)
        if (back.ok) expect(back.address).toEqual(a)
        expect(canonicalSocketAddress(text)).toBe(text)
      }),
      { numRuns: 500 }
    )
  })

  it("property: every spelling of an IPv6 address has the same canonical form", () => {
    fc.assert(
      fc.property(
        socketAddress.filter((a) => a.family === 6),
        (a) => {
          for (const s of ipv6Spellings(a)) expect(canonicalSocketAddress(s)).toBe(formatSocketAddress(a))
        }
      )
    )
  })

  it("property: parsing never throws", () => {
    fc.assert(
      fc.property(fc.string(), (s) => void parseSocketAddress(s)),
      { numRuns: 1000 }
    )
  })
})

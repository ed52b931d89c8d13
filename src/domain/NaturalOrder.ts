/** Natural order of node ids: `prefill-2` before `prefill-10`. */
export const compareNatural = (a: string, b: string): number => {
  const pa = a.match(/\d+|\D+/g) ?? []
  const pb = b.match(/\d+|\D+/g) ?? []
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const x = pa[i] ?? ""
    const y = pb[i] ?? ""
    if (x === y) continue
    const nx = /^\d/.test(x)
    const ny = /^\d/.test(y)
    if (nx && ny) {
      const d = Number(x) - Number(y)
      if (d !== 0) return d
      return x.length - y.length
    }
    return x < y ? -1 : 1
  }
  return pa.length - pb.length || (a < b ? -1 : a > b ? 1 : 0)
}

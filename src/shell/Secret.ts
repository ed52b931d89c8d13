/** The cluster secret: `--cluster-secret-file` (contents, trimmed) or `TANDEM_CLUSTER_SECRET`; at least 16 bytes. */
import { readFileSync } from "node:fs"

export const MIN_SECRET_BYTES = 16

export const HOW_TO_SET_SECRET =
  "set TANDEM_CLUSTER_SECRET or pass --cluster-secret-file FILE (at least 16 bytes, the same on every node of the cluster; " +
  "e.g. `openssl rand -hex 32 > secret && chmod 600 secret`); `tandem up` makes one for you"

export const loadClusterSecret = (file: string | undefined, env: NodeJS.ProcessEnv = process.env): Buffer => {
  let text: string | undefined
  if (file !== undefined) {
    try {
      text = readFileSync(file, "utf8").trim()
    } catch (e) {
      throw new Error(`cannot read --cluster-secret-file ${file}: ${(e as Error).message}`, { cause: e })
    }
  } else {
    text = env["TANDEM_CLUSTER_SECRET"]?.trim()
  }
  if (text === undefined || text === "") throw new Error(`no cluster secret: ${HOW_TO_SET_SECRET}`)
  const secret = Buffer.from(text, "utf8")
  if (secret.byteLength < MIN_SECRET_BYTES)
    throw new Error(`the cluster secret is shorter than ${MIN_SECRET_BYTES} bytes: ${HOW_TO_SET_SECRET}`)
  return secret
}

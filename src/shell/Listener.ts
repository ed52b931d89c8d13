/** A node's one framed-TCP listener: accepts, authenticates, hands authenticated connections over. */
import net from "node:net"
import { Connection, type HandshakeOptions } from "./Connection.js"
import type { Logger } from "./Log.js"

export interface BoundListener {
  readonly server: net.Server
  readonly host: string
  readonly port: number
  /** Every authenticated connection currently open. */
  readonly connections: Set<Connection>
  close(): Promise<void>
}

export const listen = (
  host: string,
  port: number,
  options: HandshakeOptions,
  log: Logger,
  onConnection: (conn: Connection) => void
): Promise<BoundListener> =>
  new Promise((resolve, reject) => {
    const connections = new Set<Connection>()
    const sockets = new Set<net.Socket>()
    const server = net.createServer({ noDelay: true }, (socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
      const remote = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`
      Connection.handshake(socket, "listener", options).then(
        (conn) => {
          connections.add(conn)
          conn.on({ close: () => connections.delete(conn) })
          log.info("peer connected", { peer: `${conn.peer.role}/${conn.peer.nodeId}`, remote })
          onConnection(conn)
        },
        (e: Error) => log.warn("refused a connection", { remote, reason: e.message })
      )
    })
    server.once("error", reject)
    server.listen({ host, port }, () => {
      const addr = server.address()
      if (addr === null || typeof addr === "string") return reject(new Error("listener has no TCP address"))
      resolve({
        server,
        host,
        port: addr.port,
        connections,
        close: () =>
          new Promise((r) => {
            for (const s of sockets) s.destroy()
            server.close(() => r())
          })
      })
    })
  })

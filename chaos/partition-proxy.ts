/**
 * A TCP proxy that can partition the network: between one worker and PostgreSQL, it forwards
 * bytes both ways until `partition()`, and from then on forwards nothing and closes nothing —
 * no RST, no FIN, no error, packets simply stop arriving, as when a switch or a route dies. A
 * connection opened during the partition is accepted (the kernel would complete the handshake of
 * a listening socket anyway) and then hears nothing back. `heal()` forwards again; what each side
 * sent meanwhile was held, not dropped, as TCP's retransmissions would deliver it after a short
 * partition, so a connection that both ends kept open carries on intact. A side that gave up on
 * its connection during the partition (destroyed the socket) is seen only after the heal, as a
 * real peer would learn it.
 */

import net from 'node:net';

interface Pair {
  readonly client: net.Socket;
  upstream: net.Socket | null;
}

export class PartitionProxy {
  readonly #server: net.Server;
  readonly #target: { host: string; port: number };
  readonly #pairs = new Set<Pair>();
  #partitioned = false;
  #port = 0;
  /** Connections accepted, in all. */
  accepted = 0;

  private constructor(server: net.Server, target: { host: string; port: number }) {
    this.#server = server;
    this.#target = target;
  }

  /** Listens on a free port of 127.0.0.1 and forwards to `host:port`. */
  static async start(host: string, port: number): Promise<PartitionProxy> {
    const server = net.createServer();
    const proxy = new PartitionProxy(server, { host, port });
    server.on('connection', (socket) => proxy.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const addr = server.address();
    proxy.#port = typeof addr === 'object' && addr !== null ? addr.port : 0;
    return proxy;
  }

  get port(): number {
    return this.#port;
  }

  get partitioned(): boolean {
    return this.#partitioned;
  }

  /** Stops forwarding in both directions on every connection, open or yet to open. */
  partition(): void {
    this.#partitioned = true;
    for (const p of this.#pairs) {
      p.client.pause();
      p.upstream?.pause();
    }
  }

  /** Forwards again: held bytes flow, connections opened meanwhile reach the server now. */
  heal(): void {
    this.#partitioned = false;
    for (const p of [...this.#pairs]) {
      if (p.upstream === null) this.#connect(p);
      else {
        p.client.resume();
        p.upstream.resume();
      }
    }
  }

  async close(): Promise<void> {
    for (const p of this.#pairs) {
      p.client.destroy();
      p.upstream?.destroy();
    }
    this.#pairs.clear();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: net.Socket): void {
    this.accepted++;
    const pair: Pair = { client, upstream: null };
    this.#pairs.add(pair);
    client.on('error', () => {});
    client.on('close', () => {
      pair.upstream?.destroy();
      this.#pairs.delete(pair);
    });
    if (this.#partitioned) client.pause();
    else this.#connect(pair);
  }

  #connect(pair: Pair): void {
    const { client } = pair;
    if (client.destroyed) {
      this.#pairs.delete(pair);
      return;
    }
    const upstream = net.connect(this.#target.port, this.#target.host);
    pair.upstream = upstream;
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
    // Manual forwarding, so that pause() holds bytes in the sockets' buffers instead of letting a
    // pipe resume them.
    client.on('data', (chunk: Buffer) => upstream.write(chunk));
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    if (this.#partitioned) {
      client.pause();
      upstream.pause();
    } else {
      client.resume();
    }
  }
}

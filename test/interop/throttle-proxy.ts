/**
 * A TCP proxy on 127.0.0.1 in front of a real server that slows what the server sends (a rate per
 * connection) and can hold it back (`pause()`). RGW on loopback serves a test object in well
 * under a second; the tests that must act in the middle of a download (a SIGKILL, an object
 * replaced) go through this, so their moment does not depend on the machine's speed. Requests
 * pass unchanged (SigV4 signs the Host header, which the proxy does not touch).
 */
import { once } from 'node:events';
import net, { type AddressInfo, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Slices the rate is applied to: small enough for a smooth rate, large enough for few timers. */
const SLICE = 16 * 1024;

export class ThrottleProxy {
  /** Bytes sent to clients (response headers and bodies) since the start or `resetCount()`. */
  bytesDown = 0;
  private bytesPerSec: number | undefined;
  private gate: { promise: Promise<void>; open: () => void } | undefined;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: net.Server,
    readonly endpoint: string,
  ) {}

  static async start(upstreamEndpoint: string, bytesPerSec?: number): Promise<ThrottleProxy> {
    const upstream = new URL(upstreamEndpoint);
    const server = net.createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const proxy = new ThrottleProxy(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    proxy.bytesPerSec = bytesPerSec;
    server.on('connection', (client) => proxy.connect(client, upstream.hostname, Number(upstream.port || 80)));
    return proxy;
  }

  setRate(bytesPerSec: number | undefined): void {
    this.bytesPerSec = bytesPerSec;
  }

  /** Holds every byte from the server until `resume()`. */
  pause(): void {
    if (this.gate !== undefined) return;
    let open!: () => void;
    const promise = new Promise<void>((resolve) => (open = resolve));
    this.gate = { promise, open };
  }

  resume(): void {
    const gate = this.gate;
    this.gate = undefined;
    gate?.open();
  }

  resetCount(): void {
    this.bytesDown = 0;
  }

  async close(): Promise<void> {
    this.resume();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private connect(client: Socket, host: string, port: number): void {
    const server = net.connect({ host, port });
    this.sockets.add(client).add(server);
    const end = () => {
      client.destroy();
      server.destroy();
      this.sockets.delete(client);
      this.sockets.delete(server);
    };
    client.on('error', end).on('close', end);
    server.on('error', end).on('close', end);
    client.pipe(server);
    server.on('data', (chunk: Buffer) => {
      server.pause();
      this.forward(client, chunk).then(
        () => server.resume(),
        () => end(),
      );
    });
  }

  private async forward(client: Socket, chunk: Buffer): Promise<void> {
    for (let at = 0; at < chunk.length; at += SLICE) {
      while (this.gate !== undefined) await this.gate.promise;
      if (client.destroyed) return;
      const slice = chunk.subarray(at, at + SLICE);
      this.bytesDown += slice.length;
      if (!client.write(slice)) await Promise.race([once(client, 'drain'), once(client, 'close')]);
      if (this.bytesPerSec !== undefined) await sleep((slice.length / this.bytesPerSec) * 1000);
    }
  }
}

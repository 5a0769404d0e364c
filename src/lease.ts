/**
 * How long a worker may trust a lease it cannot renew: the self-fencing deadline.
 *
 * The job queue decides lease expiry by its own clock (PostgreSQL's `now()`), the worker measures
 * time by its own monotonic clock, and the two can run at different rates. A renewal sets the
 * lease's end to the queue's `now() + lease` when the queue *executes* it, which is after the
 * worker *sent* it; so, measured from the send, the lease lasts at least `lease` by the queue's
 * clock. The worker holds the job until
 *
 *     (monotonic time the last confirmed renewal was sent) + lease − margin
 *
 * and, once that has passed without a newer confirmed renewal, treats the job as lost at once:
 * it stops the processor, aborts uploads, drops prefetched downloads and never uploads or
 * completes (README "Fleet operation").
 *
 * The margin is a tenth of the lease (`LEASE_MARGIN_FRACTION`). It covers the queue's clock
 * running up to about 10 % faster than the worker's — real clocks differ by well under 0.1 %
 * (NTP keeps them within 500 ppm, quartz drifts tens of ppm), so the rest absorbs a worker whose
 * timers fire late on a loaded machine or after a short VM pause. Proportional, because a rate
 * difference loses time in proportion to the interval measured. It costs nothing while
 * renewals succeed: it only shortens how long a worker that cannot reach the queue keeps
 * working, and it requires `heartbeat < lease − margin` so that renewals on time never let the
 * deadline pass.
 */

/** The fraction of the lease kept as the safety margin. */
export const LEASE_MARGIN_FRACTION = 0.1;

/** The safety margin for a lease of `leaseMs`, in whole milliseconds. */
export function leaseSafetyMarginMs(leaseMs: number): number {
  return Math.ceil(leaseMs * LEASE_MARGIN_FRACTION);
}

/** How long after a renewal was sent its lease surely still holds. */
export function leaseTrustMs(leaseMs: number): number {
  return leaseMs - leaseSafetyMarginMs(leaseMs);
}

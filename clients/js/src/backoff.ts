/**
 * Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
 * Jitter"): the delay before retry `attempt` (0-based) is uniform in
 * `[0, min(cap, base * 2^attempt))`. Full jitter spreads a crowd of clients that lost the
 * same node over the whole window, so the survivors are not hit in waves.
 */
export function backoffDelay(attempt: number, base: number, cap: number, random: () => number): number {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}

/**
 * The `exp` claim of a JWT in milliseconds since the epoch, or `undefined` when the token is
 * not a JWT or has no `exp`. The signature is not checked: the server does that.
 */
export function tokenExpiry(token: string | undefined): number | undefined {
  const part = token && token.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))).exp;
    return typeof exp === 'number' ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

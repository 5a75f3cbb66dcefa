/** A tiny typed event emitter (no dependency, works in browsers and Node). */
export class Emitter<E extends { [K in keyof E]: unknown }> {
  private handlers: { [K in keyof E]?: Array<(arg: E[K]) => void> } = {};

  /** Calls `fn` on every `event` until {@link off}. */
  on<K extends keyof E>(event: K, fn: (arg: E[K]) => void): this {
    (this.handlers[event] ||= []).push(fn);
    return this;
  }

  /** Removes a handler added with {@link on} or {@link once}. */
  off<K extends keyof E>(event: K, fn: (arg: E[K]) => void): this {
    const list = this.handlers[event];
    if (list) this.handlers[event] = list.filter((f) => f !== fn && (f as Once).fn !== fn);
    return this;
  }

  /** Calls `fn` on the next `event` only. */
  once<K extends keyof E>(event: K, fn: (arg: E[K]) => void): this {
    const w = ((arg: E[K]) => {
      this.off(event, w);
      fn(arg);
    }) as ((arg: E[K]) => void) & Once;
    w.fn = fn;
    return this.on(event, w);
  }

  /**
   * Calls the handlers in order. A handler that throws does not stop the others nor the
   * client's state machine: the exception is rethrown on a fresh task, where the host reports it.
   */
  protected emit<K extends keyof E>(event: K, arg: E[K]): void {
    for (const fn of (this.handlers[event] || []).slice()) {
      try {
        fn(arg);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

interface Once {
  fn?: unknown;
}

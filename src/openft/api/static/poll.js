// Repeats an async task while a view is open; never overlaps runs, and stops when the view closes.

export function pollMs(fallback) {
  // ?poll=MS on the page URL speeds polling up (tests, demos) without changing the default.
  const fromUrl = Number(new URLSearchParams(location.search).get("poll"));
  return fromUrl > 0 ? fromUrl : fallback;
}

export function repeat(task, intervalMs, onError) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    if (stopped) return;
    let again = true;
    try {
      again = (await task()) !== false;
      onError(null);
    } catch (error) {
      onError(error);
    }
    if (!stopped && again) timer = setTimeout(run, intervalMs);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

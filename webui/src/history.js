// The run's history as /dg/rows sends it ({started_at, time: [epoch s], groups, series: {key: [values]}}), kept in
// the page and turned into what locust-ui's LineChart draws: {time: [iso], key: [[iso, value], ...]}.

export const emptyHistory = { startedAt: null, time: [], groups: [], series: {} };

// Samples after the last one held; a new run (another started_at) replaces everything.
export function mergeHistory(held, update) {
  if (!update || update.started_at === null || update.started_at === undefined) {
    return held;
  }
  const sameRun = held.startedAt === update.started_at;
  const base = sameRun ? held : { ...emptyHistory, startedAt: update.started_at };
  const length = base.time.length;
  const series = {};
  const keys = new Set([...Object.keys(base.series), ...Object.keys(update.series)]);
  for (const key of keys) {
    const old = base.series[key] || new Array(length).fill(null);
    const added = update.series[key] || new Array(update.time.length).fill(null);
    series[key] = old.concat(added);
  }
  return { startedAt: update.started_at, time: base.time.concat(update.time), groups: update.groups, series };
}

export function chartData(history, keys) {
  const time = history.time.map(seconds => new Date(seconds * 1000).toISOString());
  const charts = { time };
  for (const key of keys) {
    const values = history.series[key] || [];
    charts[key] = time.map((iso, index) => [iso, values[index] === undefined ? null : values[index]]);
  }
  return charts;
}

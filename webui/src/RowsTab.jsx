// The Rows tab: the status line, the table of rows per user class, in total and per worker, and the charts of the
// run (rows/s, batch size, insert latency; per worker and per user class), all from /dg/rows on the master.
import { useCallback, useMemo, useRef, useState } from 'react';
import { Alert, Box, Typography } from '@mui/material';
import { useSelector } from 'react-redux';
import { LineChart, Table, useInterval } from 'locust-ui';

import { chartData, emptyHistory, mergeHistory } from './history';
import { formatChartValue, formatNumber } from './format';

const POLL_MS = 2000;
const OUTCOME_COLORS = ['#00ca5a', '#ff6d6d', '#ff9f00'];
const SIZE_COLORS = ['#0099ff', '#8a2be2'];
const LATENCY_COLORS = ['#00ca5a', '#ff9f00', '#ff6d6d'];
const WORKER_COLORS = ['#0099ff', '#00ca5a', '#ff9f00', '#8a2be2', '#ff6d6d', '#00897b', '#6d4c41', '#3949ab'];

const rowsLines = group => [
  { name: 'Acknowledged', key: `${group}/inserted_per_s` },
  { name: 'Failed', key: `${group}/failed_per_s` },
  { name: 'In doubt', key: `${group}/in_doubt_per_s` },
];
const sizeLines = group => [
  { name: 'Current', key: `${group}/batch_size` },
  { name: 'Best', key: `${group}/best_batch_size` },
];
const latencyLines = [
  { name: '50th percentile', key: 'latency/p50' },
  { name: '95th percentile', key: 'latency/p95' },
  { name: '99th percentile', key: 'latency/p99' },
];

function charts(groups) {
  const workers = groups.filter(({ kind }) => kind === 'worker');
  const classes = groups.filter(({ kind }) => kind === 'class');
  const list = [
    { id: 'rows', title: 'Rows/s', lines: rowsLines('total'), colors: OUTCOME_COLORS },
    { id: 'batch-size', title: 'Batch size (rows)', lines: sizeLines('total'), colors: SIZE_COLORS },
    { id: 'latency', title: 'Insert latency (ms)', lines: latencyLines, colors: LATENCY_COLORS },
  ];
  if (workers.length) {
    list.push({
      id: 'workers',
      title: 'Rows/s per worker (acknowledged)',
      lines: workers.map(({ key, label }) => ({ name: label, key: `${key}/inserted_per_s` })),
      colors: workers.map((_, index) => WORKER_COLORS[index % WORKER_COLORS.length]),
    });
  }
  if (classes.length > 1) {
    for (const { key, label } of classes) {
      list.push({ id: `rows-${label}`, title: `Rows/s of ${label}`, lines: rowsLines(key), colors: OUTCOME_COLORS });
      list.push({ id: `batch-size-${label}`, title: `Batch size of ${label}`, lines: sizeLines(key), colors: SIZE_COLORS });
    }
  }
  return list;
}

export default function RowsTab() {
  const isDarkMode = useSelector(({ theme }) => theme.isDarkMode);
  const [page, setPage] = useState({ status: null, columns: [], rows: [] });
  const [history, setHistory] = useState(emptyHistory);
  const held = useRef(emptyHistory);

  const poll = useCallback(async () => {
    const last = held.current.time.length ? held.current.time[held.current.time.length - 1] : '';
    const response = await fetch(`dg/rows?since=${last}`);
    if (!response.ok) {
      return;
    }
    const data = await response.json();
    held.current = mergeHistory(held.current, data.history);
    setHistory(held.current);
    setPage(data);
  }, []);

  useInterval(poll, POLL_MS, { shouldRunInterval: true, immediate: true });

  const structure = page.columns.map(({ key, title }) =>
    key === 'name' ? { key, title } : { key, title, formatter: formatNumber },
  );
  // The same chart and line objects while the groups stay the same: a new lines array makes a chart redraw itself
  // from scratch.
  const groupsKey = JSON.stringify(history.groups);
  const chartList = useMemo(() => charts(history.groups), [groupsKey]);
  const data = useMemo(
    () => chartData(history, chartList.flatMap(({ lines }) => lines.map(({ key }) => key))),
    [history, chartList],
  );

  return (
    <Box sx={{ display: 'flex', flexDirection: 'column', rowGap: 2 }}>
      {page.status && (
        <Alert id='dg-status-line' severity={page.status.level}>
          {page.status.text}
        </Alert>
      )}
      <Box id='dg-rows-table'>
        <Table rows={page.rows} structure={structure} />
      </Box>
      {history.time.length > 0 ? (
        <Box key={history.startedAt} sx={{ display: 'flex', flexDirection: 'column', rowGap: 2 }}>
          {chartList.map(({ id, title, lines, colors }) => (
            <Box className='dg-chart' data-chart={id} id={`dg-chart-${id}`} key={id}>
              <LineChart
                chartValueFormatter={formatChartValue}
                charts={data}
                colors={colors}
                isDarkMode={isDarkMode}
                lines={lines}
                shouldReplaceMergeLines
                title={title}
              />
            </Box>
          ))}
        </Box>
      ) : (
        <Typography color='text.secondary'>The charts start with the next test.</Typography>
      )}
    </Box>
  );
}

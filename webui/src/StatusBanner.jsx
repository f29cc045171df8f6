// Why the run stopped by itself (or why rows are failing), on every tab but the Rows tab (which has the status line):
// the status line of /dg/status, shown while it is a warning or an error, until the next test or the user closes it.
import { useCallback, useState } from 'react';
import { Alert, Snackbar } from '@mui/material';
import { useSelector } from 'react-redux';
import { useInterval } from 'locust-ui';

const POLL_MS = 2000;

export default function StatusBanner() {
  const [status, setStatus] = useState(null);
  const [closed, setClosed] = useState(null);
  const onRowsTab = useSelector(({ url }) => !!url.query && url.query.tab === 'dg_rows');

  const poll = useCallback(async () => {
    const response = await fetch('dg/status');
    if (response.ok) {
      setStatus(await response.json());
    }
  }, []);

  useInterval(poll, POLL_MS, { shouldRunInterval: true, immediate: true });

  const line = status && status.status;
  const loud = line && (line.level === 'error' || line.level === 'warning');
  const key = line ? `${status.started_at}:${line.text}` : null;
  return (
    <Snackbar anchorOrigin={{ vertical: 'bottom', horizontal: 'center' }} open={!!loud && !onRowsTab && closed !== key}>
      <Alert id='dg-status-banner' onClose={() => setClosed(key)} severity={loud ? line.level : 'info'} variant='filled'>
        {line ? line.text : ''}
      </Alert>
    </Snackbar>
  );
}

// Locust's own web UI (the locust-ui package) with dg-locust's Rows tab, and a status banner on every tab.
import { createRoot } from 'react-dom/client';
import { Provider } from 'react-redux';
import LocustUi, { locustStore } from 'locust-ui';

import RowsTab from './RowsTab';
import StatusBanner from './StatusBanner';

const extendedTabs = [{ title: 'Rows', key: 'dg_rows', component: RowsTab }];

createRoot(document.getElementById('root')).render(
  <>
    <LocustUi extendedTabs={extendedTabs} />
    <Provider store={locustStore}>
      <StatusBanner />
    </Provider>
  </>,
);

// Numbers as people read them: thousands separators, decimals only where they say something.
const whole = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

export function formatNumber(value) {
  if (value === null || value === undefined || value === '') {
    return '';
  }
  const number = Number(value);
  if (!Number.isFinite(number)) {
    return String(value);
  }
  return Math.abs(number) < 100 ? oneDecimal.format(number) : whole.format(number);
}

// The chart tooltip gets [time, value] pairs.
export const formatChartValue = value => formatNumber(Array.isArray(value) ? value[1] : value);

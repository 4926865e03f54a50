"""Human-readable numbers (tables, logs, reports)."""


def human(n, digits=3, unit=''):
    """``1234567 -> '1.235M'``: K/M/G/T suffixes, ``digits`` decimals; small numbers as integers."""
    value = float(n)
    for div, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(value) >= div:
            return f'{value / div:.{digits}f}{suffix}{unit}'
    return f'{value:.0f}{unit}'


__all__ = ['human']

"""Lengths of time in seconds: the one definition every process's bounds, windows and reports count in."""

HOUR_S = 3_600.0
DAY_S = 24 * HOUR_S
WEEK_S = 7 * DAY_S
YEAR_S = 365 * DAY_S

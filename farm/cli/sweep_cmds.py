"""Sweeps, schedules and regressions: sweep, schedule, beat, regressions, check."""

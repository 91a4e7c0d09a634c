"""Reports: report, compare, diff, import."""

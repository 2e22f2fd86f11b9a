"""Reporting a repair's result: results.json (results), the tables (tables), the plots (plots)
and the one writer of the output directory (writer); the comparison table of a grid (comparison)."""

"""Reports: terminal tables, the HTML page, plots."""

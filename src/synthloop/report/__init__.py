"""Reports: the project report (HTML/Markdown), the nightly report, plots, cost and CO2 impact."""

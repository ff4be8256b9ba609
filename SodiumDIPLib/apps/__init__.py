"""What users run: command line, background worker and jobs, Slicer scene adapter, reports, benchmarks."""

"""The night's batch: plan the scans, execute them (in this process, pipelined over tile
workers, or over a Dask cluster), collect the tables, reports and provenance.

`outline.run_batch` is the one outline; `executors` are the interchangeable ways to
execute the scans; `scans` is what every executor does with one scan's outcome.
"""

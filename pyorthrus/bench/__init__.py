"""`pyorthrus bench`: AR vs Orthrus vs prompt lookup side by side, and what the device makes of each.

cli.py runs the modes on one model; pass_costs.py measures what a K-token pass costs against one decode step (the
profile that `auto` mode also uses); shapes.py generates random-weight GGUFs of real model shapes and shape_runs.py
times them (`--shape`); report.py writes the Markdown, the plots and the cross-device comparison.
"""

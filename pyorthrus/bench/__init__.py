"""`pyorthrus bench`: AR vs Orthrus vs prompt lookup side by side, and what the device makes of each.

cli.py runs the modes on one model, with the device profile of pyorthrus.pass_costs (what a K-token pass costs
against one decode step: the runtime's `auto` mode measures it too, so it lives below this package); device.py says
which CPU and accelerators a run had; shapes.py generates random-weight GGUFs of real model shapes and shape_runs.py
times them (`--shape`); report.py writes the Markdown, the plots and the cross-device comparison.
"""

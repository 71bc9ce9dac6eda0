"""`pyorthrus check`: does Orthrus output equal plain AR output of the same model?

cli.py runs the trajectories (greedy token streams, Orthrus vs AR) and adds the optional sections: reference.py
(llama.cpp logits vs the PyTorch reference), sampling.py (seeded sampling distributions, chi-square), tasks.py
(GSM8K / HumanEval answers scored both ways); stats.py holds their statistics.
"""

"""Experiment workflows on top of data/ and train/: the PLW sweep, evaluation, the paper's fit of
the optimum and the analysis of runs. Imports data/ and train/, never cli/; never prints."""

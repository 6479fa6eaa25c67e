"""W&B sweeps over recipe keys: configs, search, a local runner, and the Pareto front."""

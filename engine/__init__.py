"""The training engine under train.py: config -> dataset and model (build), precision and the optimiser step,
data loaders, experiment tracking, and what a real-size config costs on a CPU (cpu_cost)."""

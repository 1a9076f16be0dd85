"""`python -m train`: the training CLI (config, data, loop, checkpoints). See `python -m train --help`."""

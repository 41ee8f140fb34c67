"""Pieces of the training job (`internvqa_jax.train`): optimiser, state, step, loop, logging."""

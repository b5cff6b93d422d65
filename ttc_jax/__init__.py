"""ttc_jax: compute-optimal test-time scaling of LLM reasoning in JAX/Flax."""

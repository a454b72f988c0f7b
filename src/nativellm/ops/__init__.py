"""Use cases over the whole pipeline: upgrade and rollback, doctor, benchmarks, load generation."""

"""The MLX engine: a managed mlx/mlx-lm runtime, MLX model directories, and mlx_lm.server instances."""

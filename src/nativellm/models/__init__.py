"""The model store: registry, downloads, GGUF validation, memory fit, Ollama import."""

"""Integration tier: real compiles of llama.cpp, real llama-server, real HTTP on loopback.

llama.cpp comes from the llama-cpp-python sdist on PyPI (it vendors a full tree),
downloaded once into ~/.cache/nativellm-test and reused. The session fixtures
(`llama_source`, `session_home`, `auto_build`, `trap_binary`) live in tests/conftest.py,
so this tier and the e2e tier share one build per test session.
"""

"""The build pipeline: plan, source, toolchain, compile, smoke test, store, artifacts."""

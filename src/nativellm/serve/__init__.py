"""Serving: unit files and drop-ins, the systemd adapter, instances, RPC workers."""

"""Logs and metrics: how the server tells its operators what it is doing."""

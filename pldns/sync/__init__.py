"""The control plane: the sync loop, sources (static, privatelink, file), sinks, lease, discovery."""

"""The data plane: bytes in, bytes out. Imports nothing from sync, config, yaml or the cloud SDK."""

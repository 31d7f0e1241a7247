"""Every config key in one folder: load/parse, the schema helpers, one module per section
group (dns, sync, ops) and resolv.conf."""

from pldns.config.load import Config, load_config, parse_config

__all__ = ["Config", "load_config", "parse_config"]

"""pldns: a DNS forwarding proxy that answers cloud API host names with PrivateLink IPs."""

__version__ = "0.1.0"

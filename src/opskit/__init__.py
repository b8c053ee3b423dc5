"""opskit: declarative runbooks for a Proxmox homelab."""

__version__ = "0.1.0"

"""opskit: declarative runbooks for a Proxmox homelab."""

import warnings

__version__ = "0.1.0"

# asyncssh names cryptography's DSA classes when it is imported and when it sorts a key by type;
# cryptography 51 warns on each such use, so every command that loads SSH printed five warnings
# about an algorithm opskit never offers. Nothing there is the user's to act on: the warning is
# silenced for asyncssh's own modules alone (a DSA use anywhere else still warns).
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")

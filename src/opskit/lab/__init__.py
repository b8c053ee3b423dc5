"""The lab: the homelab of the inventory, simulated on this machine with real processes.

Each guest and Tailscale host is a real OpenSSH sshd in its own network, mount, UTS and PID
namespaces, with copy-on-write overlays of the machine's /etc, /opt, /usr, /var, /srv, /root and
/home; Proxmox is fakepve, the Beszel hub a real PocketBase. Everything sits on a private bridge
in namespaces of its own: nothing is added to the machine's network namespace.
"""

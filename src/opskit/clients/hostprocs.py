"""What opskit looks for among a host's processes (in shell `case` patterns, matched against
/proc/PID/comm, which keeps 15 characters of a name)."""

# The package managers: an upgrade or a reboot waits for them, and a command cut short that runs
# one is left to finish (dpkg cut mid-install breaks packages).
PACKAGE_MANAGERS = "apt|apt-get|aptitude|dpkg|unattended-upgr"

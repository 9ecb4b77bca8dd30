grep -E '^(Package|Status|Version):' /var/lib/dpkg/status

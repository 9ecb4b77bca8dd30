id
printf 'umask='; umask
if read -r reprun_v < /proc/sys/kernel/hostname; then echo "hostname=$reprun_v"
else echo "hostname=$(cat /etc/hostname)"; fi

cat /lib/apk/db/installed
